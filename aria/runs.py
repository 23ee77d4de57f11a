"""The run service: every channel's requests, approvals, expiries and start-up recovery go through here, once.

    channel ──request──> handle ──> agent loop ──> finish run + write the reply (one transaction) ──> channel.deliver
    channel ──press────> decide ──> (acknowledge, best effort) ──> resume: the action runs once ──> reply
    scheduler ─────────> expire ──> edit the request's message ──> close the run ──> reply
    start ─────────────> recover ──> resume, or "may have run", or "I was restarted…" with Retry

A channel (Telegram, the terminal, events) turns its input into a `Request` and implements `Channel`: show progress
while a run works, deliver a written outbox row (an answer, an approval request, an edit of an approval's message),
and, when the ledger cannot be written, tell the owner without it. What happens around a run (the reply written
with the run, the approval's message id and expiry job, alerts) happens here for every channel alike.

While the ledger cannot be written (disk full, read-only file), nothing acts: no model call, no tool. The owner is
told once, directly, each request gets a short direct reply, and a probe write brings Aria back when space returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aria.agent.outcome import Action, Outcome
from aria.agent.provenance import OWNER_TRIGGERS, untrusted_sources
from aria.agent.state import Request
from aria.approvals import Press, PressResult, callback_data
from aria.channel import Channel, Live, Quiet, ReplyWriter
from aria.errors import AlreadyHandled, LedgerUnavailable
from aria.ledger import Approval, Ledger, Run
from aria.recovery import Recovery
from aria.sanitize import shorten

if TYPE_CHECKING:
    from aria.app import Aria

log = logging.getLogger(__name__)

PROBE_EVERY = 10.0  # seconds between probe writes while the ledger cannot be written
Acknowledge = Callable[[PressResult], Awaitable[None]]


class RunService:
    """handle, decide, resume, expire and recover: the life of every run, for every channel."""

    def __init__(self, aria: Aria, *, probe_every: float = PROBE_EVERY) -> None:
        self.aria = aria
        self.ledger = aria.ledger
        self.outbox = aria.outbox
        self.channels: dict[str, Channel] = {}
        self.recovery = Recovery(self)
        self._probe_every = probe_every
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._told_down = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the service runs on, set by `recover`
        self.ledger.health.listeners.append(self._health_changed)

    # channels -----------------------------------------------------------------------------------------------

    def attach(self, channel: Channel) -> None:
        """Register a channel: recovery, expiries and notices for its chats go through it."""
        self.channels[channel.name] = channel

    def channel_for(self, run_channel: str | None) -> Channel | None:
        """The channel that answers a run started on `run_channel` (events answer on Telegram)."""
        name = "terminal" if run_channel == "terminal" else "telegram"
        return self.channels.get(name)

    def owner_chat(self) -> int | None:
        """Where proactive messages go: the first owner."""
        return self.aria.settings.owner_ids[0] if self.aria.settings.owner_ids else None

    # requests -----------------------------------------------------------------------------------------------

    async def handle(self, request: Request, channel: Channel, *, notify: bool = True,
                     live: bool = True) -> Outcome | None:
        """Run one request and deliver its reply (written in the run's final transaction, so it cannot be lost).
        None when the ledger cannot be written (nothing ran; the owner was told directly) or when the recorded
        message it answers was already taken by another run."""
        if not self.ledger.health.writable:
            await self._refuse_unwritable(channel, request.chat_id, request.text)
            return None
        presence = channel.live(request.chat_id) if live else Quiet()
        writer = ReplyWriter(self.outbox, channel, request.chat_id, presence, notify=notify)
        try:
            async with presence:
                outcome = await self.aria.agent.run(request, presence, reply=writer)
        except LedgerUnavailable:
            await self._refuse_unwritable(channel, request.chat_id, request.text)
            return None
        except AlreadyHandled:
            return None  # a second copy of a message another run answers
        await self.after_run(outcome, channel, writer.row_id)
        return outcome

    async def carry_on(self, run_id: int, channel: Channel, chat_id: int, *, claimed: bool = False) -> Outcome | None:
        """A Continue press on an answer cut at the output limit: the same run goes on from its kept state, within
        its caps, once (a second press, or one on a run that is not waiting, finds nothing to take: None). The
        caller may have `claimed` the run already (`Ledger.claim_continuation`) to answer the press first."""
        if not self.ledger.health.writable:
            await self._refuse_unwritable(channel, chat_id, "continue")
            return None
        if not claimed and not self.ledger.claim_continuation(run_id):
            return None
        run = self.ledger.run(run_id)
        assert run is not None
        presence = channel.live(chat_id)
        writer = ReplyWriter(self.outbox, channel, chat_id, presence)
        try:
            async with presence:
                outcome = await self.aria.agent.continue_run(run, presence, reply=writer)
        except LedgerUnavailable:
            await self._refuse_unwritable(channel, chat_id, "continue")
            return None
        await self.after_run(outcome, channel, writer.row_id)
        return outcome

    async def reply(self, channel: Channel, chat_id: int, text: str, *, photo: bytes | None = None,
                    actions: list[Action] | None = None, purpose: str = "message",
                    approval_id: int | None = None, document: bytes | None = None,
                    file_name: str | None = None) -> int | None:
        """A command's reply, written before it is sent; sent directly when the ledger cannot be written."""
        try:
            row_id = self.outbox.enqueue(chat_id, text, photo=photo, actions=actions, purpose=purpose,
                                         channel=channel.name, approval_id=approval_id, document=document,
                                         file_name=file_name)
        except LedgerUnavailable:
            await channel.tell_directly(chat_id, text)
            return None
        return await self.deliver(channel, row_id)

    # approvals ----------------------------------------------------------------------------------------------

    async def decide(self, press: Press, user_id: int, channel: Channel,
                     acknowledge: Acknowledge | None = None) -> PressResult:
        """An Approve or Reject press: one compare-and-set decides it, then the run resumes at once. The press is
        acknowledged on the side: that call failing (or hanging in a 429 wait) never stands between the decision
        and the action."""
        result = self.aria.approvals.decide(press, user_id)
        if acknowledge is not None:
            self.spawn(acknowledge(result), f"acknowledge approval {press.approval_id}")
        approval = self.aria.approvals.get(press.approval_id)
        if approval is None:
            return result
        if result == "expired":
            self.mark_approval(approval, "Expired: not run.")
            await self.resume(approval, channel)
        elif result in ("approved", "rejected"):
            self.aria.scheduler.cancel(f"approval-expiry:{approval.id}")  # decided: its expiry will never come
            self.mark_approval(approval, f"{'Approved' if result == 'approved' else 'Rejected'} by you.")
            await self.resume(approval, channel)
        if result == "rejected":  # a critical miss: the skill goes down a level at once, and the owner is told
            notice = self.aria.rollout.approval_rejected(approval, user_id)
            chat_id = approval.chat_id if approval.chat_id is not None else self.owner_chat()
            if notice is not None and chat_id is not None:
                await self.reply(channel, chat_id, notice.text)
        return result

    async def resume(self, approval: Approval, channel: Channel | None = None) -> Outcome | None:
        """Carry on the run behind a decided approval (the action runs exactly once) and deliver its reply. None when
        another task or process already carries it on."""
        assert approval.id is not None and approval.run_id is not None
        if not self.ledger.claim_run(approval.run_id):
            return None
        fresh = self.aria.approvals.get(approval.id) or approval
        run = self.ledger.run(approval.run_id)
        channel = channel or self.channel_for(run.channel if run else None)
        chat_id = fresh.chat_id if fresh.chat_id is not None else self.owner_chat()
        presence: Live = channel.live(chat_id) if channel is not None else Quiet()
        writer = ReplyWriter(self.outbox, channel, chat_id, presence)
        try:
            async with presence:
                outcome = await self.aria.agent.resume(fresh, presence, reply=writer)
        except LedgerUnavailable:
            if channel is not None and chat_id is not None:
                await self._refuse_unwritable(channel, chat_id, fresh.summary)
            return None
        await self.after_run(outcome, channel, writer.row_id)
        return outcome

    async def expire(self, approval_id: int) -> bool:
        """Expire one approval if it is still pending past its time: edit its message, close its run with a
        message. False when it was decided in the meantime (or is not due)."""
        approval = self.aria.approvals.get(approval_id)
        if approval is None or approval.status != "pending" or approval.expires_at > self.ledger.now():
            return False
        if not self.aria.approvals.expire(approval_id):
            return False
        expired = self.aria.approvals.get(approval_id) or approval
        self.mark_approval(expired, "Expired: not run.")
        await self.resume(expired)
        return True

    async def expire_due(self) -> int:
        """Expire every pending approval past its time; returns how many."""
        return sum([await self.expire(a.id) for a in self.aria.approvals.due_to_expire() if a.id is not None])

    def schedule_expiry(self, approval: Approval) -> None:
        """A one-off job at the approval's expiry (no sweeping poll); a past expiry runs at once."""
        assert approval.id is not None
        self.aria.scheduler.once(f"approval-expiry:{approval.id}", approval.expires_at, self.expire, approval.id)

    def mark_approval(self, approval: Approval, line: str) -> None:
        """Show the decision on the approval's message and remove its buttons: an edit, written before it is sent
        and sent on the side. Nothing to edit when the request's message never went out."""
        if approval.chat_id is None or approval.message_id is None:
            return
        run = self.ledger.run(approval.run_id) if approval.run_id else None
        channel = self.channel_for(run.channel if run else None)
        name = channel.name if channel is not None else "telegram"
        try:
            row_id = self.outbox.enqueue(approval.chat_id, f"{approval.summary}\n{line}", kind="edit",
                                         edit_message_id=approval.message_id, purpose="approval-edit",
                                         channel=name, run_id=approval.run_id)
        except LedgerUnavailable:
            return
        if channel is not None:
            # On the side: an edit waiting out a 429 must not hold up the action the decision is about.
            self.spawn(self.deliver(channel, row_id), f"mark approval {approval.id}")

    def request_actions(self, approval: Approval) -> list[Action]:
        """The Approve / Reject / Details buttons of an approval."""
        return [Action("Approve", callback_data(approval, "a")), Action("Reject", callback_data(approval, "r")),
                Action("Details", callback_data(approval, "d"))]

    # after a run --------------------------------------------------------------------------------------------

    async def after_run(self, outcome: Outcome, channel: Channel | None, row_id: int | None) -> None:
        """The same steps after every run, whatever its channel: deliver the reply, give a new approval request
        its expiry job, check the budget alerts."""
        if channel is not None and row_id is not None:
            await self.deliver(channel, row_id)
        if outcome.approval_id is not None:
            approval = self.aria.approvals.get(outcome.approval_id)
            if approval is not None:
                self.schedule_expiry(approval)
        # Alerts read a few aggregates: off the event loop, so the next update is not kept waiting.
        try:
            await asyncio.to_thread(self.aria.alerts.check)
        except LedgerUnavailable:
            log.warning("budget alerts not checked: the ledger cannot be written")

    async def deliver(self, channel: Channel, row_id: int | None) -> int | None:
        """Hand a written row to its channel now; a failure leaves it to the channel's sender."""
        if row_id is None:
            return None
        try:
            return await channel.deliver(row_id)
        except LedgerUnavailable:
            return None  # the row is written; the channel's sender delivers it when the ledger is back

    def spawn(self, work: Awaitable[Any], name: str) -> None:
        """Run `work` in the background, kept until it ends and cancelled by `stop`."""
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel background work (resumed runs are left for the next start) and the ledger probe."""
        if self._probe is not None:
            self._probe.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *([self._probe] if self._probe else []), return_exceptions=True)
        self._probe = None

    # the ledger cannot be written ---------------------------------------------------------------------------

    async def _refuse_unwritable(self, channel: Channel, chat_id: int | None, text: str) -> None:
        if chat_id is None:
            return
        if self._told_down:
            await channel.tell_directly(chat_id, f"Not done: {self._down_reason()}, so I am not acting until it "
                                        f"can be written again. (You asked: «{shorten(text)}»)")
            return
        self._told_down = True
        await channel.tell_directly(chat_id, self._down_notice())

    def _down_reason(self) -> str:
        return f"my ledger cannot be written ({self.ledger.health.reason or 'unknown'})"

    def _down_notice(self) -> str:
        return (f"⚠ I stopped acting: {self._down_reason()}. While nothing can be recorded I make no model calls "
                "and run no tools. /status shows the state; I start again by myself once the database can be "
                "written (free some disk space, or fix the file's permissions).")

    def _health_changed(self, reason: str | None) -> None:
        # Writes also happen in worker threads (the probe, alerts): the reaction always runs on the event loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._went_down if reason is not None else self._came_back)

    def _went_down(self) -> None:
        owner = self.owner_chat()
        channel = self.channels.get("telegram") or next(iter(self.channels.values()), None)
        if owner is not None and channel is not None and not self._told_down:
            self._told_down = True
            self.spawn(channel.tell_directly(owner, self._down_notice()), "ledger-down notice")
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_writable(), name="ledger-probe")

    def _came_back(self) -> None:
        if not self._told_down:
            return
        self._told_down = False
        self.spawn(self.recovery.after_outage(), "ledger recovered")

    async def _probe_until_writable(self) -> None:
        while not self.ledger.health.writable:
            await asyncio.sleep(self._probe_every)
            with contextlib.suppress(LedgerUnavailable):
                await asyncio.to_thread(self.ledger.probe_write)

    # start-up -----------------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: settle what a stopped process left (see aria.recovery), before new requests arrive."""
        self._loop = asyncio.get_running_loop()
        await self.recovery.run()


def retry_request(ledger: Ledger, run: Run, kind: str, chat_id: int, user_id: int | None) -> Request:
    """The request a Retry press runs again ("again", "strong", "budget", "raise"). Someone else's words (a forward,
    a document, an event) stay theirs in the retry: same trigger, same untrusted sources."""
    owners = run.trigger in OWNER_TRIGGERS
    return Request(text=run.request, trigger="message" if owners else run.trigger, channel="telegram",
                   chat_id=chat_id, user_id=user_id, escalate=kind == "strong",
                   budget_factor=2.0 if kind == "budget" else 1.0,
                   sources=() if owners else tuple(untrusted_sources(ledger, run.id or 0)))


__all__ = ["RunService", "retry_request"]
