"""The persisted circuit breaker: thresholds, cooldowns, the single half-open probe, and restarts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from aria.breaker import BreakerBoard, CircuitBreaker
from aria.clock import ManualClock
from aria.ledger import Breaker, Ledger
from tests.conftest import START


def row(ledger: Ledger, key: str) -> Breaker | None:
    with ledger.read() as session:
        return session.get(Breaker, key)


def trip(breaker: CircuitBreaker, times: int = 3) -> None:
    for n in range(times):
        breaker.record_failure(f"boom {n}")


def test_closed_breaker_allows_calls_and_writes_nothing(ledger: Ledger) -> None:
    breaker = CircuitBreaker("svc", ledger)
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    breaker.record_success()
    assert row(ledger, "svc") is None


def test_opens_after_threshold_consecutive_failures(ledger: Ledger) -> None:
    breaker = CircuitBreaker("svc", ledger, failure_threshold=3, cooldown=30)
    trip(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.allow()
    saved = row(ledger, "svc")
    assert saved is not None and saved.state == "closed" and saved.failures == 2

    breaker.record_failure("boom 3")
    assert breaker.state == "open"
    assert breaker.open_until == START + dt.timedelta(seconds=30)
    assert not breaker.allow()
    saved = row(ledger, "svc")
    assert saved is not None
    assert (saved.state, saved.failures, saved.last_error) == ("open", 3, "boom 3")
    assert saved.open_until == START + dt.timedelta(seconds=30)


def test_success_resets_the_consecutive_count(ledger: Ledger) -> None:
    breaker = CircuitBreaker("svc", ledger, failure_threshold=3)
    trip(breaker, 2)
    breaker.record_success()
    trip(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.failures == 2


def test_retry_after_longer_than_cooldown_holds_the_circuit_open(ledger: Ledger, clock: ManualClock) -> None:
    breaker = CircuitBreaker("svc", ledger, failure_threshold=1, cooldown=30)
    breaker.record_failure("429", retry_after=120)
    assert breaker.open_until == START + dt.timedelta(seconds=120)
    clock.advance(60)
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(60)
    assert breaker.state == "half_open"


def test_half_open_lets_exactly_one_probe_through(ledger: Ledger, clock: ManualClock) -> None:
    breaker = CircuitBreaker("svc", ledger, cooldown=30)
    trip(breaker)
    clock.advance(29)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert [breaker.allow() for _ in range(5)] == [False] * 5
    saved = row(ledger, "svc")
    assert saved is not None and saved.state == "half_open"


def test_probe_success_closes_the_circuit(ledger: Ledger, clock: ManualClock) -> None:
    breaker = CircuitBreaker("svc", ledger, cooldown=30)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.open_until is None
    assert breaker.allow() and breaker.allow()
    saved = row(ledger, "svc")
    assert saved is not None and (saved.state, saved.failures, saved.open_until) == ("closed", 0, None)


def test_probe_failure_reopens_at_once_for_another_cooldown(ledger: Ledger, clock: ManualClock) -> None:
    breaker = CircuitBreaker("svc", ledger, failure_threshold=3, cooldown=30)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    breaker.record_failure("still down")
    assert breaker.state == "open"
    assert breaker.open_until == clock.now() + dt.timedelta(seconds=30)
    assert not breaker.allow()
    clock.advance(30)
    assert breaker.allow()


def test_a_lost_probe_is_replaced_after_its_lease(ledger: Ledger, clock: ManualClock) -> None:
    breaker = CircuitBreaker("svc", ledger, cooldown=30, probe_lease=60)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()  # this probe never reports (its task was cancelled)
    clock.advance(59)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_open_state_survives_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    first = BreakerBoard(Ledger.open(tmp_path / "aria.db", clock=clock), cooldown=30)
    trip(first.get("connector:web"))

    clock.advance(10)
    again = BreakerBoard(Ledger.open(tmp_path / "aria.db", clock=clock), cooldown=30).get("connector:web")
    assert again.state == "open"
    assert again.open_until == START + dt.timedelta(seconds=30)
    assert not again.allow()
    clock.advance(20)
    assert again.allow()


def test_probe_in_flight_at_a_crash_does_not_keep_the_circuit_stuck(tmp_path: Path, clock: ManualClock) -> None:
    first = BreakerBoard(Ledger.open(tmp_path / "aria.db", clock=clock), cooldown=30).get("svc")
    trip(first)
    clock.advance(30)
    assert first.allow()  # the probe goes out, then the process dies
    assert not first.allow()

    after_restart = BreakerBoard(Ledger.open(tmp_path / "aria.db", clock=clock), cooldown=30).get("svc")
    assert after_restart.state == "half_open"
    assert after_restart.allow()
    assert not after_restart.allow()


def test_board_caches_one_breaker_per_key_and_snapshots_rows(ledger: Ledger) -> None:
    board = BreakerBoard(ledger, failure_threshold=1)
    assert board.get("a") is board.get("a")
    board.get("b").record_failure("down")
    board.get("a").record_failure("down too")
    board.get("c").record_success()  # never failed: nothing to persist
    snapshot = board.snapshot()
    assert [(r.key, r.state) for r in snapshot] == [("a", "open"), ("b", "open")]
    assert all(r.open_until is not None and r.open_until.tzinfo is not None for r in snapshot)


def test_last_error_is_redacted(ledger: Ledger) -> None:
    breaker = CircuitBreaker("svc", ledger)
    breaker.record_failure("401 with key sk-abcdefghijklmnopqrstuv")
    saved = row(ledger, "svc")
    assert saved is not None and saved.last_error == "401 with key [redacted]"
