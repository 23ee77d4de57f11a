"""Circuit breakers whose state lives in the ledger, so an open circuit stays open across a restart.

    closed ──(failure_threshold consecutive failures)──> open ──(open_until passes)──> half_open
    half_open ──(the one probe succeeds)──> closed
    half_open ──(the probe fails)──> open again

An open circuit holds for max(cooldown, Retry-After). Half-open lets exactly one probe through; a probe that never
reports (its task was cancelled, or the process died) is presumed lost after `probe_lease` seconds, and a restart
forgets it at once, so a circuit cannot stay stuck. Every state change is written through to the `breaker` table.
Nothing here awaits, so one lock makes a breaker safe for asyncio tasks and threads alike.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Literal, get_args

from sqlmodel import select

from aria.ledger import Breaker, Ledger, as_utc

BreakerState = Literal["closed", "open", "half_open"]
_STATES: frozenset[str] = frozenset(get_args(BreakerState))
_ERROR_CHARS = 500


class CircuitBreaker:
    """One circuit (an endpoint, a model, a connector or a host), persisted in the `breaker` table."""

    def __init__(self, key: str, ledger: Ledger, *, failure_threshold: int = 3, cooldown: float = 30.0,
                 probe_lease: float | None = None) -> None:
        self.key = key
        self._ledger = ledger
        self._threshold = max(1, failure_threshold)
        self._cooldown = dt.timedelta(seconds=cooldown)
        self._lease = dt.timedelta(seconds=probe_lease if probe_lease is not None else max(cooldown, 60.0))
        self._lock = threading.Lock()
        # When the current half-open probe was let through; deliberately not persisted, so a probe that was in
        # flight when the process died does not block the next one.
        self._probe_since: dt.datetime | None = None
        self._state: BreakerState = "closed"
        self._failures = 0
        self._open_until: dt.datetime | None = None
        self._load()

    @property
    def state(self) -> BreakerState:
        """The state now: an open circuit whose time is up reads as half_open."""
        with self._lock:
            return self._effective(self._ledger.now())

    @property
    def open_until(self) -> dt.datetime | None:
        """When an open circuit lets its next probe through (aware UTC), or None."""
        with self._lock:
            return self._open_until

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        with self._lock:
            return self._failures

    def allow(self) -> bool:
        """Whether a call may go out now; in half_open only one probe at a time is let through."""
        now = self._ledger.now()
        with self._lock:
            state = self._effective(now)
            if state == "closed":
                return True
            if state == "open":
                return False
            if self._probe_since is not None and now - self._probe_since < self._lease:
                return False
            self._probe_since = now
            if self._state != "half_open":
                self._state = "half_open"
                self._save(now, None)
            return True

    def record_success(self) -> None:
        """A call succeeded: close the circuit and forget the failures."""
        now = self._ledger.now()
        with self._lock:
            changed = self._state != "closed" or self._failures > 0
            self._state, self._failures, self._open_until, self._probe_since = "closed", 0, None, None
            if changed:
                self._save(now, None)

    def record_failure(self, error: str, retry_after: float | None = None) -> None:
        """A call failed: count it, and open the circuit at the threshold or when the probe itself failed."""
        now = self._ledger.now()
        with self._lock:
            self._failures += 1
            if self._state != "closed" or self._failures >= self._threshold:
                hold = max(self._cooldown, dt.timedelta(seconds=retry_after or 0.0))
                until = now + hold
                # A late failure from a call let through before the circuit opened must not shorten the hold.
                if self._effective(now) == "open" and self._open_until is not None:
                    until = max(until, self._open_until)
                self._state, self._open_until, self._probe_since = "open", until, None
            self._save(now, error)

    def _effective(self, now: dt.datetime) -> BreakerState:
        if self._state == "open" and (self._open_until is None or now >= self._open_until):
            return "half_open"
        return self._state

    def _load(self) -> None:
        with self._ledger.read() as session:
            row = session.get(Breaker, self.key)
            if row is None:
                return
            self._state = row.state if row.state in _STATES else "closed"  # type: ignore[assignment]
            self._failures = row.failures
            self._open_until = as_utc(row.open_until) if row.open_until else None

    def _save(self, now: dt.datetime, error: str | None) -> None:
        with self._ledger.write() as session:
            row = session.get(Breaker, self.key) or Breaker(key=self.key, updated_at=now)
            row.state, row.failures, row.open_until, row.updated_at = (
                self._state, self._failures, self._open_until, now,
            )
            if error is not None:
                row.last_error = (self._ledger.redact(error) or "")[:_ERROR_CHARS]
            session.add(row)


class BreakerBoard:
    """Hands out one breaker per key, all sharing the same thresholds and ledger."""

    def __init__(self, ledger: Ledger, *, failure_threshold: int = 3, cooldown: float = 30.0) -> None:
        self._ledger = ledger
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CircuitBreaker:
        """The breaker for `key`, created (and loaded from the ledger) on first use."""
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = CircuitBreaker(key, self._ledger, failure_threshold=self._threshold,
                                         cooldown=self._cooldown)
                self._breakers[key] = breaker
            return breaker

    def snapshot(self) -> list[Breaker]:
        """Every persisted breaker row, by key, for /status."""
        with self._ledger.read() as session:
            return list(session.exec(select(Breaker).order_by(Breaker.key)))
