"""The digest service: composes digests and /cost reports, and sends the daily digest through the outbox once a day.

Queries and charts run in a worker thread (`asyncio.to_thread`), so chatting never stalls while a chart is drawn.

Each day has one digest *slot*, the configured local time. The digest due in a slot reports on the previous local day
when that time is in the morning (a morning digest reads best as "yesterday"), else on the slot's own day. The last
slot served is a ledger flag, and each owner's message carries the slot in its outbox dedupe key, so a slot is never
served twice, also across restarts. At start-up a catch-up check serves the latest slot if the process was not
running when it came: one late digest, saying how many were missed, never one per missed day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aria.digest.charts import digest_chart, spend_chart
from aria.digest.data import LiveState, events_accepted_today, load_cost, load_digest
from aria.digest.text import cost_text, digest_text, status_lines
from aria.jobs import will_run
from aria.ledger import as_utc, usd_to_micros
from aria.outbox import Outbox
from aria.rollout.views import digest_lines
from aria.scheduler import NOOP, NothingDue, Scheduler

if TYPE_CHECKING:
    from aria.app import Aria

LAST_SLOT_FLAG = "digest:last_slot"
DAILY_JOB = "digest:daily"
CATCH_UP_JOB = "digest:catch-up"
LATE_AFTER = dt.timedelta(hours=1)  # APScheduler's misfire grace: later than this, the process was not running
MORNING_ENDS = dt.time(12, 0)
MAX_COST_DAYS = 90


@dataclass(frozen=True)
class Digest:
    """A composed digest: the day it reports on, its text, and its chart (None when there is nothing to chart)."""

    day: dt.date
    text: str
    png: bytes | None


class DigestService:
    """Composes digests and cost reports from the ledger and queues the daily digest for every owner."""

    def __init__(self, aria: Aria, outbox: Outbox) -> None:
        self.aria = aria
        self.outbox = outbox
        self.ledger = aria.ledger
        self.settings = aria.settings
        self.tz = aria.settings.tz

    @property
    def day_cap(self) -> int:
        """The daily budget in micro-dollars."""
        return self.aria.budget.day_cap

    @property
    def month_cap(self) -> int:
        """The monthly budget in micro-dollars: configured, or 30 daily budgets."""
        configured = self.settings.month_max_usd
        return usd_to_micros(configured) if configured is not None else 30 * self.day_cap

    def today(self, now: dt.datetime | None = None) -> dt.date:
        """The owner's local date."""
        return (now or self.ledger.now()).astimezone(self.tz).date()

    # composing --------------------------------------------------------------------------------------------

    async def compose(self, day: dt.date | None = None) -> Digest:
        """The digest of a local day (default: today so far)."""
        state = self.live_state()
        today = self.today()
        return await asyncio.to_thread(self._digest, day or today, state, today, "")

    async def cost(self, days: int = 7) -> Digest:
        """Spend over the last `days` local days (1 to 90), with a chart when there was any."""
        days = max(1, min(days, MAX_COST_DAYS))
        return await asyncio.to_thread(self._cost, days, self.today())

    def render_to_file(self, day: dt.date, out: Path) -> Digest:
        """Write the digest chart of `day` to `out` (no file when there is nothing to chart: its `png` is None)."""
        digest = self._digest(day, self.live_state(), self.today(), "")
        if digest.png is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(digest.png)
        return digest

    def status_lines(self) -> list[str]:
        """Lines for /status: pending approvals, circuits, paused state, next jobs, undelivered messages."""
        return status_lines(self.live_state(), self.tz)

    def live_state(self) -> LiveState:
        """How things stand now (cheap reads, done on the caller's thread)."""
        aria = self.aria
        circuits = [(row.key, aria.board.get(row.key).state) for row in aria.board.snapshot()]
        # Jobs get their next run time only once the scheduler runs (a CLI render has none to show).
        jobs = [job for job in aria.scheduler.upcoming(20) if will_run(aria, job[0])][:3] \
            if aria.scheduler.running else []
        return LiveState(
            pending_approvals=[(a.id or 0, a.summary) for a in aria.approvals.pending()],
            open_circuits=[(key, state) for key, state in circuits if state != "closed"],
            paused=aria.scheduler.paused(), next_jobs=jobs,
            undelivered=self.outbox.undelivered(), refused=self.outbox.refused_count(),
            outbound_calls=aria.connectors.calls_today(), events_accepted=events_accepted_today(aria),
        )

    def _digest(self, day: dt.date, state: LiveState, today: dt.date, note: str) -> Digest:
        data = load_digest(self.ledger, day, self.tz, day_cap=self.day_cap, month_cap=self.month_cap)
        text = digest_text(data, state, tz=self.tz, today=today, note=note)
        rollout = digest_lines(self.aria)  # per-skill autonomy, agreement and approval rates
        if rollout:
            text += "\n\n" + "\n".join(rollout)
        png = digest_chart(data.spend_chart, data.runs_chart, self.day_cap) if data.chartable else None
        return Digest(day, text, png)

    def _cost(self, days: int, today: dt.date) -> Digest:
        report = load_cost(self.ledger, today, days, day_cap=self.day_cap, month_cap=self.month_cap)
        png = spend_chart(report.chart, self.day_cap) if report.total else None
        return Digest(today, cost_text(report, today=today), png)

    # the daily digest -------------------------------------------------------------------------------------

    def schedule(self, scheduler: Scheduler) -> None:
        """The daily job at the configured local time (DST-aware), and a catch-up check right away."""
        scheduler.daily(DAILY_JOB, self.settings.digest_time, self.send_daily)
        scheduler.once(CATCH_UP_JOB, self.ledger.now(), self.catch_up)

    def latest_slot(self, now: dt.datetime) -> dt.date:
        """The local day of the latest digest time at or before `now`."""
        local = now.astimezone(self.tz)
        return local.date() if local >= self._due(local.date()) else local.date() - dt.timedelta(days=1)

    def report_day(self, slot: dt.date) -> dt.date:
        """The day the digest due in `slot` reports on."""
        return slot - dt.timedelta(days=1) if self.settings.digest_time < MORNING_ENDS else slot

    def last_slot(self) -> dt.date | None:
        """The latest slot a digest was queued for."""
        value = self.ledger.get_flag(LAST_SLOT_FLAG)
        return dt.date.fromisoformat(value) if value else None

    async def send_daily(self, now: dt.datetime | None = None) -> int:
        """Queue the digest of the latest slot for every owner, unless that slot was served; returns how many."""
        now = as_utc(now) if now is not None else self.ledger.now()
        slot = self.latest_slot(now)
        last = self.last_slot()
        if last is not None and last >= slot:
            return 0
        state = self.live_state()
        note = self._late_note(now, slot, last)
        digest = await asyncio.to_thread(self._digest, self.report_day(slot), state, self.today(now), note)
        queued = 0
        for owner in self.settings.owner_ids:
            queued += self.outbox.enqueue(owner, digest.text, photo=digest.png, purpose="digest",
                                          dedupe_key=f"digest:{slot.isoformat()}:{owner}") is not None
        self.ledger.set_flag(LAST_SLOT_FLAG, slot.isoformat())
        return queued

    async def catch_up(self, now: dt.datetime | None = None) -> int | NothingDue:
        """At start-up: serve a slot missed while the process was down (a first start has missed nothing). NOOP
        when nothing was missed, so the start-up check is not counted as a job that did something."""
        now = as_utc(now) if now is not None else self.ledger.now()
        if self.last_slot() is None:
            self.ledger.claim_flag(LAST_SLOT_FLAG, self.latest_slot(now).isoformat())
            return NOOP
        return await self.send_daily(now) or NOOP

    def _due(self, slot: dt.date) -> dt.datetime:
        return dt.datetime.combine(slot, self.settings.digest_time, tzinfo=self.tz)

    def _late_note(self, now: dt.datetime, slot: dt.date, last: dt.date | None) -> str:
        due = self._due(slot)
        late = now - due > LATE_AFTER
        # Slots after the last one served that got no digest on time; this late digest stands in for all of them.
        missed = (slot - last).days - (0 if late else 1) if last is not None else int(late)
        if missed <= 0:
            return ""
        plural = "digests were" if missed > 1 else "digest was"
        return (f"⚠ Sent late: {missed} daily {plural} missed while Aria was not running "
                f"(this one was due {due:%a} {due.day} {due:%b %H:%M}).")
