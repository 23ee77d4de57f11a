"""Start-up recovery: what a stopped process left unfinished is resumed, reported or retried, never lost.

For each run a dead process left `running` (or interrupted while stopping), taken over by one compare-and-set:

    an approved action was executing      ──> approval `unknown`, run interrupted: "it may have run" (never "not run")
    a risky tool had started              ──> the same: "it may have run"
    its approval was approved, not begun  ──> resumed: the action runs exactly once
    a scheduled job                       ──> interrupted (the job's own catch-up logic applies)
    an owner request or event, recent,    ──> resumed from its last checkpoint (or its request), its spend so far
      not resumed before                        counted against the same caps
    anything else                         ──> interrupted: "I was restarted while working on «…»" with a Retry button

Open reservations of those runs are closed at their worst case first (the calls may have been billed). Then: every
approval decided but whose run never carried on is resumed (an approved action runs, once), and approvals past
their expiry expire.
A process recovers only runs of the channels it serves, so `aria chat` and `aria run` on one database leave each
other's live runs alone (a run's worker is its process, checked for liveness).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlmodel import col, select

from aria.agent.outcome import Action
from aria.channel import Quiet, ReplyWriter
from aria.errors import LedgerUnavailable
from aria.ledger import Approval, Run, as_utc
from aria.ledger.models import ApprovalStatus, RunStatus
from aria.sanitize import shorten

if TYPE_CHECKING:
    from aria.runs import RunService

log = logging.getLogger(__name__)

RESUME_WITHIN = dt.timedelta(hours=1)  # an older request is offered a Retry instead of being answered out of the blue
RESUMABLE_TRIGGERS = ("message", "event")


@dataclass
class Report:
    """What one recovery did, for the log."""

    resumed: list[int] = field(default_factory=list)
    retry_offered: list[int] = field(default_factory=list)
    may_have_run: list[int] = field(default_factory=list)
    approvals_resumed: list[int] = field(default_factory=list)
    reservations_closed: int = 0


class Recovery:
    """Runs once at start-up (and after the ledger comes back from being unwritable)."""

    def __init__(self, runs: RunService) -> None:
        self.runs = runs
        self.ledger = runs.ledger
        self.approvals = runs.aria.approvals

    async def run(self) -> Report:
        """Settle every unfinished run of the attached channels, then decided and expired approvals."""
        report = Report()
        orphans = [run for run in self.ledger.orphaned_runs() if self._ours(run) and self.ledger.adopt_run(run)]
        report.reservations_closed = self.ledger.close_reservations([run.id for run in orphans if run.id])
        for run in orphans:
            await self._settle(run, report)
        for approval in self._decided_never_resumed():
            assert approval.id is not None
            report.approvals_resumed.append(approval.id)
            self.runs.spawn(self.runs.resume(approval), f"resume approval {approval.id}")
        for approval in self.approvals.pending():
            self.runs.schedule_expiry(approval)  # a past expiry runs at once
        if orphans or report.approvals_resumed:
            log.warning("recovered after a stop: %s", report)
        return report

    def _ours(self, run: Run) -> bool:
        return run.channel == "scheduler" or self.runs.channel_for(run.channel) is not None

    async def _settle(self, run: Run, report: Report) -> None:
        assert run.id is not None
        executing = self._approval(run.id, "executing")
        acting = self.ledger.acting_steps(run.id)
        if executing is not None or acting:
            what = executing.summary if executing is not None else f"the action {acting[0].name}"
            if executing is not None and executing.id is not None:
                self.approvals.mark_unknown(executing.id)
            for step in acting:
                assert step.id is not None
                self.ledger.finish_step(step.id, "unknown", latency_ms=0, error_type="Interrupted",
                                        result="the process stopped while it ran: it may have run")
            report.may_have_run.append(run.id)
            await self._close(run, "interrupted", "unknown_action",
                              f"I was restarted while this action was running: {what}. It may or may not have "
                              "run, so it is recorded as unknown and I did not run it again. Please check before "
                              "asking for it again.")
            return
        approved = self._approval(run.id, "approved")
        if approved is not None and approved.id is not None:
            report.approvals_resumed.append(approved.id)
            self.runs.spawn(self.runs.resume(approved), f"resume approval {approved.id}")
            return
        if run.channel == "scheduler":
            self.ledger.finish_run(run.id, "interrupted", stop_reason="restarted",
                                   final_text="Interrupted: Aria was restarted while this job ran.")
            return
        if self._resumable(run):
            report.resumed.append(run.id)
            self.runs.spawn(self._continue(run), f"resume run {run.id}")
            return
        report.retry_offered.append(run.id)
        await self._close(run, "interrupted", "restarted",
                          f"I was restarted while working on «{shorten(run.request)}» and could not finish it.",
                          actions=[Action("Retry", f"retry:again:{run.id}")])

    def _resumable(self, run: Run) -> bool:
        assert run.id is not None
        recent = self.ledger.now() - as_utc(run.started_at) <= RESUME_WITHIN
        # Resumed once at most: a request that crashes Aria every time must not crash it forever.
        return (run.trigger in RESUMABLE_TRIGGERS and recent
                and self.ledger.claim_flag(f"run:{run.id}:resumed", self.ledger.worker))

    async def _continue(self, run: Run) -> None:
        channel = self.runs.channel_for(run.channel)
        chat_id = run.chat_id if run.chat_id is not None else self.runs.owner_chat()
        writer = ReplyWriter(self.runs.outbox, channel, chat_id, Quiet())
        try:
            outcome = await self.runs.aria.agent.continue_run(run, reply=writer)
        except LedgerUnavailable:
            return
        await self.runs.after_run(outcome, channel, writer.row_id)

    async def _close(self, run: Run, status: RunStatus, stop_reason: str, text: str, *,
                     actions: list[Action] | None = None) -> None:
        """Finish a run with a message to the owner, both in one transaction, then deliver it."""
        assert run.id is not None
        channel = self.runs.channel_for(run.channel)
        chat_id = run.chat_id if run.chat_id is not None else self.runs.owner_chat()
        row: list[int | None] = []

        def write(conn: Connection) -> None:
            if chat_id is not None:
                values = self.runs.outbox.values(chat_id, text, actions=actions, run_id=run.id, purpose="notice",
                                                 channel=channel.name if channel is not None else "telegram")
                row.append(self.runs.outbox.insert(conn, values))

        self.ledger.finish_run(run.id, status, stop_reason=stop_reason, final_text=text, then=write)
        if channel is not None and row:
            await self.runs.deliver(channel, row[0])

    def _approval(self, run_id: int, status: ApprovalStatus) -> Approval | None:
        with self.ledger.read() as s:
            return s.exec(select(Approval).where(col(Approval.run_id) == run_id, col(Approval.status) == status)
                          .order_by(col(Approval.id).desc())).first()

    def _decided_never_resumed(self) -> list[Approval]:
        """Approvals decided (approved, rejected, expired) whose run still waits: the decision was recorded, then the
        process stopped before the run carried on (an approved action never began)."""
        decided = col(Approval.status).in_(("approved", "rejected", "expired"))
        with self.ledger.read() as s:
            rows = s.exec(select(Approval).join(Run, col(Run.id) == col(Approval.run_id))
                          .where(decided, col(Run.status) == "awaiting_approval")
                          .order_by(col(Approval.id))).all()
        return [row for row in rows if self.runs.channel_for(self._run_channel(row)) is not None]

    def _run_channel(self, approval: Approval) -> str | None:
        run = self.ledger.run(approval.run_id) if approval.run_id else None
        return run.channel if run else None

    async def after_outage(self) -> None:
        """The ledger takes writes again: runs that died with it are closed with a message, their reservations
        closed, and the owner is told Aria acts again."""
        active = self.runs.aria.agent.active
        with self.ledger.read() as s:
            stuck = list(s.exec(select(Run).where(col(Run.status) == "running", col(Run.worker) == self.ledger.worker)))
        stuck = [run for run in stuck if run.id not in active]
        self.ledger.close_reservations([run.id for run in stuck if run.id])
        for run in stuck:
            await self._close(run, "failed", "ledger_unwritable",
                              f"I stopped working on «{shorten(run.request)}» because my ledger could not be written.",
                              actions=[Action("Retry", f"retry:again:{run.id}")])
        owner = self.runs.owner_chat()
        channel = self.runs.channels.get("telegram") or next(iter(self.runs.channels.values()), None)
        if owner is not None and channel is not None:
            await self.runs.reply(channel, owner, "✅ My ledger can be written again; I am acting again.",
                                  purpose="notice")
