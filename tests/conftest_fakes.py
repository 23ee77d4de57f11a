"""Fixtures for the fakes; pulled in by tests/conftest.py.

``network_tripwire`` is autouse: no test may reach a non-loopback address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.fakes import FakeOpenAI, FakeTelegram, NetworkTripwire

__all__ = ["fake_openai", "fake_telegram", "network_tripwire", "tripwire_guard"]


@contextlib.contextmanager
def tripwire_guard() -> Iterator[NetworkTripwire]:
    """Install a tripwire; fail the test on exit if anything tripped it.

    Failing at exit (not only at the attempt) catches code that swallowed the
    RuntimeError, e.g. PTB turning it into a retried NetworkError.
    """
    wire = NetworkTripwire()
    wire.install()
    try:
        yield wire
    finally:
        wire.uninstall()
    if wire.violations:
        listed = "\n  ".join(wire.violations)
        pytest.fail(f"test attempted non-loopback network access:\n  {listed}", pytrace=False)


@pytest.fixture(autouse=True)
def network_tripwire() -> Iterator[NetworkTripwire]:
    with tripwire_guard() as wire:
        yield wire


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A started FakeTelegram (token ``123456:TEST-TOKEN``), stopped after the test."""
    fake = FakeTelegram()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started FakeOpenAI accepting any API key (set ``.api_key`` to enforce one)."""
    fake = FakeOpenAI()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
