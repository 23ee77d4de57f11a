"""Long polling that notices when it stalls, and records its outages.

python-telegram-bot's polling loop retries network errors forever, which is right, but two failures go unseen: a
poll that never completes (a half-open connection, a task that died on an unexpected error while the Updater still
says "running") and a long outage that only shows in a log. Three small parts cover them:

* `PollHealth` knows when the last getUpdates round trip completed and whether an outage is open. An outage is one
  `failure` row (component `telegram`, handling `retried`) written when polling starts failing and completed with
  its duration and number of failed polls when a poll succeeds again.
* `WatchedRequest` is the `get_updates_request` (an HTTPXRequest) that reports every completed round trip to it:
  success, an HTTP error or a network error all count as "the loop is alive"; a cancelled poll does not.
* `PollingWatchdog.check()` restarts polling (`updater.stop()`, then `start_polling` with the same options) when no
  round trip completed for `stall_seconds`, and records a `failure` row (`PollingStalled`, handling `retried`).
  `schedule()` runs the check on the Application's JobQueue, which keeps it out of Aria's run ledger.

Wiring (polling mode)::

    health = PollHealth(aria.ledger)
    application = build_application(aria, get_updates_request=WatchedRequest(health))
    watchdog = PollingWatchdog(application, aria.ledger, settings.poll_stall_seconds, health=health,
                               allowed_updates=ALLOWED_UPDATES)
    watchdog.schedule()
    application.run_polling(**watchdog.polling_options)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes, JobQueue
from telegram.request import RequestData

from aria.config import LONG_POLL_SECONDS
from aria.errors import PollingOutage, PollingStalled
from aria.ledger import Failure, Ledger
from aria.telegram.intake import Intake
from aria.telegram.request import SignallingRequest

log = logging.getLogger(__name__)
DEFAULT_POLL_TIMEOUT = LONG_POLL_SECONDS  # Telegram's longest hold of an idle getUpdates: fewest idle calls
JOB_NAME = "telegram-poll-watchdog"


class PollHealth:
    """When getUpdates last completed, and the polling outage in progress, if any."""

    def __init__(self, ledger: Ledger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._clock = clock
        self.last_completed = clock()
        self.completed_polls = 0
        self._outage_row: int | None = None
        self._outage_started: dt.datetime | None = None
        self._outage_text = ""
        self._failed_polls = 0

    @property
    def in_outage(self) -> bool:
        """True between a failed poll and the next successful one."""
        return self._outage_row is not None

    def idle_seconds(self) -> float:
        """Seconds since a getUpdates round trip last completed (or since polling was started)."""
        return self._clock() - self.last_completed

    def restarted(self) -> None:
        """Polling was (re)started: the stall clock starts again."""
        self.last_completed = self._clock()

    def completed(self, error: BaseException | None) -> None:
        """A round trip finished: a success closes an open outage, an error is counted and opens one."""
        self.last_completed = self._clock()
        self.completed_polls += 1
        if error is None:
            self._close_outage()
        else:
            self._failed_polls += 1
            self.on_error(error)

    def on_error(self, error: BaseException) -> None:
        """For `start_polling(error_callback=...)`: record the outage once, not every retry. Never raises."""
        if self._outage_row is not None:
            return
        self._outage_started = self._ledger.now()
        self._outage_text = (f"polling outage from {self._outage_started:%Y-%m-%d %H:%M:%S} UTC: "
                             f"{type(error).__name__}: {error}")
        log.warning("Telegram polling is failing (%s); retrying", type(error).__name__)
        try:
            self._outage_row = self._ledger.add_failure("telegram", PollingOutage(self._outage_text), "retried")
        except SQLAlchemyError:  # PTB's loop dies if its error callback raises; the log line above stands in
            log.exception("could not record the polling outage")

    def _close_outage(self) -> None:
        if self._outage_row is None or self._outage_started is None:
            self._failed_polls = 0
            return
        seconds = (self._ledger.now() - self._outage_started).total_seconds()
        message = f"{self._outage_text}; ended after {seconds:.0f} s, {self._failed_polls} failed poll(s)"
        log.info("Telegram polling recovered after %.0f s", seconds)
        try:
            with self._ledger.write() as session:
                row = session.get(Failure, self._outage_row)
                if row is not None:
                    row.message = (self._ledger.redact(message) or "")[:500]
                    session.add(row)
        except SQLAlchemyError:
            log.exception("could not record the end of the polling outage")
        self._outage_row, self._outage_started, self._failed_polls = None, None, 0


class WatchedRequest(SignallingRequest):
    """The getUpdates request: reports each completed round trip to a PollHealth (and, answered, to listeners)."""

    def __init__(self, health: PollHealth, **kwargs: Any) -> None:
        kwargs.setdefault("connection_pool_size", 1)  # what PTB uses for getUpdates
        super().__init__(**kwargs)
        self.health = health
        self.intake: Intake | None = None  # set by build_application: confirms wait until updates are recorded

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        """Send as HTTPXRequest does, noting that the loop is alive when the round trip ends (not when cancelled).
        A getUpdates confirms the batch before it: it waits until that batch is recorded (see aria.telegram.intake)."""
        if self.intake is not None:
            await self.intake.wait_settled()
        try:
            code, payload = await super().do_request(url, method, request_data, *args, **kwargs)
        except TelegramError as exc:  # NetworkError, TimedOut: PTB retries them; they still prove progress
            self.health.completed(exc)
            raise
        self.health.completed(None if code < 400 else TelegramHTTPStatus(f"getUpdates answered HTTP {code}"))
        if self.intake is not None and code < 400:
            self.intake.fetched(update_ids(payload))
        return code, payload


def update_ids(payload: bytes) -> list[int]:
    """The update ids in a getUpdates answer (none when it is not the expected shape)."""
    try:
        result = json.loads(payload).get("result")
    except (ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(result, list):
        return []
    return [item["update_id"] for item in result
            if isinstance(item, dict) and isinstance(item.get("update_id"), int)]


class TelegramHTTPStatus(TelegramError):
    """getUpdates got an HTTP error status (PTB raises the detailed error itself right after)."""


class PollingWatchdog:
    """Restarts polling that has stopped completing getUpdates calls."""

    def __init__(self, application: Application, ledger: Ledger,  # type: ignore[type-arg]
                 stall_seconds: float, *, health: PollHealth, allowed_updates: Sequence[str] | None = None,
                 timeout: int = DEFAULT_POLL_TIMEOUT, poll_interval: float = 0.0) -> None:
        self.application = application
        self.ledger = ledger
        self.stall_seconds = stall_seconds
        self.health = health
        self.restarts = 0
        self._restart_pending = False  # polling was stopped by a restart that has not succeeded yet
        self._options: dict[str, Any] = {"timeout": timeout, "poll_interval": poll_interval,
                                         "allowed_updates": list(allowed_updates) if allowed_updates else None}
        self._lock = asyncio.Lock()

    @property
    def polling_options(self) -> dict[str, Any]:
        """Keyword arguments for `start_polling`/`run_polling`, the error callback included."""
        return {**self._options, "error_callback": self.health.on_error}

    async def start_polling(self) -> None:
        """Start the Updater's polling with these options."""
        assert self.application.updater is not None
        await self.application.updater.start_polling(**self.polling_options)
        self.health.restarted()

    async def check(self) -> bool:
        """Restart polling when nothing completed for `stall_seconds` (or a restart failed before); True when done."""
        updater = self.application.updater
        if updater is None or self._lock.locked():
            return False
        idle = self.health.idle_seconds()
        if updater.running:
            if idle < self.stall_seconds:
                return False
        elif not self._restart_pending:
            return False  # stopped on purpose (shutdown), not by us
        async with self._lock:
            if updater.running:
                stalled = PollingStalled(f"no getUpdates completed for {idle:.0f} s "
                                         f"(limit {self.stall_seconds:.0f} s); polling restarted")
                log.warning("%s", stalled)
                self.ledger.add_failure("telegram", stalled, "retried")
                try:
                    await updater.stop()
                except TelegramError as exc:  # a polling task that died re-raises its error here; restart anyway
                    self.ledger.add_failure("telegram", exc, "retried")
            self._restart_pending = True
            try:
                await self.start_polling()
            except TelegramError as exc:  # e.g. still offline: the next check tries again
                self.ledger.add_failure("telegram", exc, "retried")
                return False
            self._restart_pending = False
            self.restarts += 1
        return True

    def schedule(self, job_queue: JobQueue | None = None,  # type: ignore[type-arg]
                 every: float | None = None) -> None:
        """Run `check` every `every` seconds (a quarter of the stall limit, 1 s at least) on the JobQueue."""
        queue = job_queue or self.application.job_queue
        if queue is None:
            raise RuntimeError("the Application has no JobQueue (install python-telegram-bot[job-queue])")
        interval = every if every is not None else max(1.0, self.stall_seconds / 4)
        queue.run_repeating(self._job, interval=interval, first=interval, name=JOB_NAME)

    async def _job(self, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self.check()
