"""Approve / Reject / Details buttons, /approvals, and the expiry job's Telegram side."""

from __future__ import annotations

import asyncio
import json
import logging

from telegram import Bot, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from aria.agent.outcome import Action, Outcome
from aria.app import Aria
from aria.approvals import PressResult, callback_data, parse_callback
from aria.ledger import Approval
from aria.telegram.progress import ProgressMessage, Typing
from aria.telegram.send import keyboard, send_text

log = logging.getLogger(__name__)

REFUSALS: dict[PressResult, str] = {
    "not_found": "That approval does not exist.",
    "stale": "That button does not match the action on record; nothing was done.",
    "expired": "That approval has expired; nothing was run.",
    "already_decided": "Already decided; nothing more was done.",
}


def _aria(context: ContextTypes.DEFAULT_TYPE) -> Aria:
    return context.bot_data["aria"]  # type: ignore[no-any-return]


async def approval_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An Approve, Reject or Details press: checked, decided atomically, then the run resumes."""
    query = update.callback_query
    assert query is not None
    aria = _aria(context)
    press = parse_callback(query.data)
    if press is None:
        aria.ledger.record_event("telegram", status="refused", verified=True, reason="malformed approval button",
                                 user_id=query.from_user.id)
        await query.answer("That button is not recognised.")
        return
    if press.verb == "d":
        await _details(aria, context.bot, query.from_user.id, press.approval_id, update.effective_chat)
        await query.answer()
        return
    result = aria.approvals.decide(press, query.from_user.id)
    approval = aria.approvals.get(press.approval_id)
    if result not in ("approved", "rejected") or approval is None:
        await query.answer(REFUSALS.get(result, "Nothing was done."))
        if result == "expired" and approval is not None:
            await mark_message(context.bot, approval, "Expired: not run.")
        return
    await query.answer("Approved: running it now." if result == "approved" else "Rejected.")
    verb = "Approved" if result == "approved" else "Rejected"
    await mark_message(context.bot, approval, f"{verb} by you.")
    await resume_and_reply(aria, context.bot, approval)


async def resume_and_reply(aria: Aria, bot: Bot, approval: Approval) -> Outcome:
    """Resume the run behind a decided approval and send its final message."""
    chat_id = approval.chat_id or aria.settings.owner_ids[0]
    progress = ProgressMessage(bot, chat_id)
    async with Typing(bot, chat_id):
        outcome = await aria.agent.resume(approval, progress.note)
    await deliver_outcome(aria, progress, outcome)
    return outcome


async def deliver_outcome(aria: Aria, progress: ProgressMessage, outcome: Outcome) -> None:
    """Send a run's final message (to the outbox if Telegram won't take it now); a new approval request remembers
    its message and gets its expiry job; budget alerts are checked now that the run's spend is settled."""
    try:
        message = await progress.finish(outcome)
    except TelegramError as exc:
        aria.ledger.add_failure("telegram", exc, "retried", run_id=outcome.run_id)
        aria.outbox.enqueue(progress.chat_id, outcome.text, actions=outcome.actions, purpose="answer",
                            run_id=outcome.run_id)
        message = None
    # Alerts read a few aggregates: off the event loop, so the next update is not kept waiting.
    await asyncio.to_thread(aria.alerts.check)
    if outcome.approval_id is None:
        return
    if message is not None:
        aria.approvals.set_message(outcome.approval_id, message.message_id)
    approval = aria.approvals.get(outcome.approval_id)
    if approval is not None:
        schedule_expiry(aria, progress.bot, approval)


def schedule_expiry(aria: Aria, bot: Bot, approval: Approval) -> None:
    """A one-off job at the approval's expiry (no sweeping poll); a past expiry runs at once."""
    aria.scheduler.once(f"approval-expiry:{approval.id}", approval.expires_at, expire_due, aria, bot)


async def mark_message(bot: Bot, approval: Approval, outcome_line: str) -> None:
    """Show the decision on the approval message and remove its buttons."""
    if approval.chat_id is None or approval.message_id is None:
        return
    try:
        await bot.edit_message_text(f"{approval.summary}\n{outcome_line}", chat_id=approval.chat_id,
                                    message_id=approval.message_id, reply_markup=None)
    except TelegramError as exc:  # the message may be gone; the decision itself is recorded
        log.info("could not edit approval message %s: %s", approval.id, exc)


async def _details(aria: Aria, bot: Bot, user_id: int, approval_id: int, chat: object) -> None:
    approval = aria.approvals.get(approval_id)
    chat_id = getattr(chat, "id", None) or user_id
    if approval is None:
        await send_text(bot, chat_id, "That approval does not exist.")
        return
    run = aria.ledger.run(approval.run_id) if approval.run_id else None
    arguments = json.dumps(json.loads(approval.args_json), indent=2, ensure_ascii=False)
    lines = [f"Approval {approval.id}: {approval.summary}", f"Tool: {approval.tool} ({approval.risk})",
             f"Arguments:\n{arguments}", f"Status: {approval.status}, expires {approval.expires_at:%Y-%m-%d %H:%M} UTC"]
    if run is not None:
        lines.append(f"Asked: {run.request[:300]}")
    await send_text(bot, chat_id, "\n".join(lines))


async def list_approvals(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/approvals: every pending approval again, with its buttons."""
    aria = _aria(context)
    assert update.effective_chat is not None
    pending = aria.approvals.pending()
    if not pending:
        await send_text(context.bot, update.effective_chat.id, "No approvals are waiting.")
        return
    for approval in pending:
        actions = [Action("Approve", callback_data(approval, "a")), Action("Reject", callback_data(approval, "r")),
                   Action("Details", callback_data(approval, "d"))]
        message = await context.bot.send_message(update.effective_chat.id, approval.summary,
                                                 reply_markup=keyboard(actions))
        aria.approvals.set_message(approval.id or 0, message.message_id)


async def expire_due(aria: Aria, bot: Bot) -> int:
    """Expire approvals past their time: edit their messages and close their runs with a message."""
    expired = 0
    for approval in aria.approvals.due_to_expire():
        if not aria.approvals.expire(approval.id or 0):
            continue  # decided in the meantime
        expired += 1
        refreshed = aria.approvals.get(approval.id or 0) or approval
        await mark_message(bot, refreshed, "Expired: not run.")
        await resume_and_reply(aria, bot, refreshed)
    return expired
