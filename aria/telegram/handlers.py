"""Thin handlers: check the owner, parse, call the core, format the answer."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import ApplicationHandlerStop, ContextTypes

from aria.agent.state import Request
from aria.app import Aria
from aria.scheduler import PAUSED_FLAG
from aria.telegram.approval_handlers import deliver_outcome
from aria.telegram.progress import ProgressMessage, Typing
from aria.telegram.send import send_text
from aria.views import help_text, set_autonomy, skills_text, status_text

log = logging.getLogger(__name__)
COST_MAX_DAYS = 90


def _aria(context: ContextTypes.DEFAULT_TYPE) -> Aria:
    return context.bot_data["aria"]  # type: ignore[no-any-return]


async def owner_guard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop every update from anyone but the owners: no reply, no model call, one ledger row."""
    aria = _aria(context)
    user = update.effective_user
    if user is not None and user.id in aria.settings.owner_ids:
        return
    kind = "callback" if update.callback_query else "message" if update.effective_message else "update"
    aria.ledger.record_event("telegram", status="refused", verified=False, delivery_id=f"update:{update.update_id}",
                             reason=f"{kind} from a non-owner", user_id=user.id if user else None)
    log.info("refused update %s from user %s", update.update_id, user.id if user else "unknown")
    if update.callback_query is not None:
        # A press always gets an answer (else the button spins); the refusal says nothing more.
        await update.callback_query.answer("Not allowed.")
    raise ApplicationHandlerStop


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the owner with the list of commands."""
    assert update.effective_chat is not None
    await send_text(context.bot, update.effective_chat.id, help_text(_aria(context).caller is not None))


async def skills(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/skills lists skills, tools, risk and autonomy; /skills <skill> <shadow|ask|auto> changes a skill's level."""
    assert update.effective_chat is not None
    aria = _aria(context)
    reply = set_autonomy(aria, context.args) if context.args else skills_text(aria)
    await send_text(context.bot, update.effective_chat.id, reply)


async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show health, today's spend and circuits."""
    assert update.effective_chat is not None
    await send_text(context.bot, update.effective_chat.id, status_text(_aria(context)))


async def digest(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/digest: today's digest now (chart and figures), through the outbox like the scheduled one."""
    assert update.effective_chat is not None
    aria = _aria(context)
    composed = await aria.digests.compose()
    aria.outbox.enqueue(update.effective_chat.id, composed.text, photo=composed.png, purpose="digest")


async def cost(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/cost [days]: spend over the last days (default 7, at most 90), chart and figures."""
    assert update.effective_chat is not None
    aria = _aria(context)
    days = context.args[0] if context.args else "7"
    if not days.isdigit() or not 1 <= int(days) <= COST_MAX_DAYS:
        await send_text(context.bot, update.effective_chat.id, f"Usage: /cost [days], 1 to {COST_MAX_DAYS}")
        return
    composed = await aria.digests.cost(int(days))
    aria.outbox.enqueue(update.effective_chat.id, composed.text, photo=composed.png, purpose="digest")


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Free text from the owner: run the agent and reply."""
    message = update.effective_message
    if message is None or update.effective_chat is None or not message.text:
        return
    await _run(context, Request(text=message.text, trigger="message", channel="telegram",
                                chat_id=update.effective_chat.id,
                                user_id=update.effective_user.id if update.effective_user else None))


async def unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Anything that is not text (stickers, files, photos): say what Aria can read."""
    if update.effective_chat is not None:
        await send_text(context.bot, update.effective_chat.id, "I can only read text messages for now.")


async def retry_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"Retry with strong model" / "Allow more budget once": re-run the original request once."""
    query = update.callback_query
    assert query is not None
    aria = _aria(context)
    _, kind, raw_id = (query.data or "").split(":", 2) if (query.data or "").count(":") == 2 else ("", "", "")
    run = aria.ledger.run(int(raw_id)) if raw_id.isdigit() else None
    chat = update.effective_chat
    if run is None or chat is None or run.chat_id != chat.id or kind not in ("strong", "budget"):
        await query.answer("That button does not refer to anything I can retry.")
        return
    if not aria.ledger.claim_flag(f"retry:{run.id}:{kind}", str(update.update_id)):
        await query.answer("Already retried.")
        return
    await query.answer("Retrying…")
    await query.edit_message_reply_markup(reply_markup=None)
    await _run(context, Request(text=run.request, trigger="message", channel="telegram", chat_id=chat.id,
                                user_id=query.from_user.id, escalate=kind == "strong",
                                budget_factor=2.0 if kind == "budget" else 1.0))


async def unknown_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Callback data that names nothing known: answer the press, change nothing."""
    query = update.callback_query
    assert query is not None
    _aria(context).ledger.record_event("telegram", status="refused", verified=True, reason="unknown callback data",
                                       user_id=query.from_user.id)
    await query.answer("That button is not recognised.")


async def _run(context: ContextTypes.DEFAULT_TYPE, request: Request) -> None:
    assert request.chat_id is not None
    aria = _aria(context)
    progress = ProgressMessage(context.bot, request.chat_id)
    async with Typing(context.bot, request.chat_id):
        outcome = await aria.agent.run(request, progress.note)
    await deliver_outcome(aria, progress, outcome)


async def pause(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/pause: the kill switch. No risky action or acting scheduled job runs until /resume."""
    assert update.effective_chat is not None
    _aria(context).ledger.set_flag(PAUSED_FLAG, "yes")
    await send_text(context.bot, update.effective_chat.id,
                    "Paused. Risky actions and scheduled actions are skipped (and recorded) until /resume.")


async def resume(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/resume: lift the kill switch."""
    assert update.effective_chat is not None
    _aria(context).ledger.set_flag(PAUSED_FLAG, "no")
    await send_text(context.bot, update.effective_chat.id, "Resumed. Actions run again (risky ones still ask).")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Record handler errors and tell the owner, instead of leaving silence."""
    aria = _aria(context)
    error = context.error or RuntimeError("unknown error")
    log.error("handler error: %s", error, exc_info=error)
    aria.ledger.add_failure("telegram", error, "reported")
    if isinstance(update, Update) and update.effective_chat is not None and update.effective_user is not None \
            and update.effective_user.id in aria.settings.owner_ids:
        await context.bot.send_message(update.effective_chat.id,
                                       f"Something went wrong handling that ({type(error).__name__}); it is recorded.")
