"""Scheduled jobs on APScheduler (the engine under python-telegram-bot's JobQueue), observable in the ledger.

Jobs have deterministic ids, so re-adding one at start-up replaces it instead of duplicating it; jobs whose state
lives in the ledger (reminders, digests, approval expiry) are re-created from it at start-up, which is how they
survive a restart. Every execution leaves a run row (trigger `schedule`); a job that would act while Aria is paused
is recorded as `skipped` instead of running.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from aria.ledger import Ledger, Run

log = logging.getLogger(__name__)
JobFunc = Callable[..., Awaitable[Any]]
PAUSED_FLAG = "paused"
NOTHING_DUE = "nothing_due"  # the stop reason of a job that found nothing to do: recorded, never counted as work


class NothingDue:
    """What a job returns when it found nothing to do (a catch-up that missed nothing)."""


NOOP = NothingDue()


class Scheduler:
    """Adds, lists and runs jobs; each execution is recorded."""

    def __init__(self, ledger: Ledger, tz: ZoneInfo) -> None:
        self.ledger = ledger
        self.tz = tz
        self.aps = AsyncIOScheduler(timezone=tz, job_defaults={"coalesce": True, "misfire_grace_time": 3600})
        self._stopping = False  # shutdown requested (the asyncio scheduler stops on the loop's next turn)

    @property
    def running(self) -> bool:
        """True while the scheduler runs jobs."""
        return bool(self.aps.running) and not self._stopping

    def start(self) -> None:
        """Start running jobs (needs a running event loop)."""
        if not self.aps.running:
            self._stopping = False
            self.aps.start()

    def shutdown(self) -> None:
        """Stop; running jobs are not waited for (the next start recovers their runs). Safe to call twice: the
        asyncio scheduler only stops on the loop's next turn, and a second request would then find it stopped."""
        if self.aps.running and not self._stopping:
            self._stopping = True
            self.aps.shutdown(wait=False)

    def paused(self) -> bool:
        """The kill switch: while set, jobs that act are skipped."""
        return self.ledger.get_flag(PAUSED_FLAG) == "yes"

    def once(self, job_id: str, when: dt.datetime, func: JobFunc, *args: Any, acts: bool = False) -> None:
        """Run `func(*args)` once at `when` (immediately if that is already past)."""
        self._add(job_id, DateTrigger(run_date=when, timezone=self.tz), func, args, acts)

    def daily(self, job_id: str, at: dt.time, func: JobFunc, *args: Any, acts: bool = False) -> None:
        """Run every day at a local time in the owner's zone (DST-aware)."""
        self._add(job_id, CronTrigger(hour=at.hour, minute=at.minute, timezone=self.tz), func, args, acts)

    def cancel(self, job_id: str) -> bool:
        """Remove a job; False when there was none."""
        if self.aps.get_job(job_id) is None:
            return False
        self.aps.remove_job(job_id)
        return True

    def upcoming(self, limit: int = 5) -> list[tuple[str, dt.datetime]]:
        """The next jobs to run, soonest first."""
        # Jobs added before the scheduler starts have no next run time yet.
        jobs = [(job.id, when) for job in self.aps.get_jobs() if (when := getattr(job, "next_run_time", None))]
        return sorted(jobs, key=lambda item: item[1])[:limit]

    def _add(self, job_id: str, trigger: Any, func: JobFunc, args: tuple[Any, ...], acts: bool) -> None:
        self.aps.add_job(self.execute, trigger, args=(job_id, func, args, acts), id=job_id, name=job_id,
                         replace_existing=True)

    async def execute(self, job_id: str, func: JobFunc, args: tuple[Any, ...], acts: bool) -> str:
        """Run one job execution and record it: ok, skipped (paused) or failed."""
        run_id = self.ledger.start_run(Run(trigger="schedule", channel="scheduler", request=job_id,
                                           started_at=self.ledger.now()))
        if acts and self.paused():
            self.ledger.finish_run(run_id, "skipped", stop_reason="paused", final_text=f"{job_id} skipped: paused")
            return "skipped"
        try:
            result = await func(*args)
        except Exception as exc:  # a failing job must be recorded and must not stop the scheduler
            log.exception("scheduled job %s failed", job_id)
            self.ledger.add_failure("scheduler", exc, "recorded", run_id=run_id)
            self.ledger.finish_run(run_id, "failed", stop_reason="error", final_text=f"{job_id} failed: {exc}")
            return "failed"
        if result is NOOP:
            self.ledger.finish_run(run_id, "skipped", stop_reason=NOTHING_DUE, final_text=f"{job_id}: nothing to do")
            return "skipped"
        self.ledger.finish_run(run_id, "ok", stop_reason="done",
                               final_text=str(result)[:500] if result is not None else job_id)
        return "ok"
