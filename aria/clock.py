"""Time as a parameter: production uses the system clock, tests inject a manual one."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time (always timezone-aware UTC)."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that moves only when told to, for expiry and schedule tests."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float = 0, **delta: float) -> dt.datetime:
        self._now += dt.timedelta(seconds=seconds, **delta)
        return self._now

    def set(self, when: dt.datetime) -> None:
        self._now = when
