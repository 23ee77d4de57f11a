"""Thin handlers: check the owner, parse, hand the request to the run service, which answers through the channel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import NoReturn

from telegram import (
    Message,
    MessageOriginChannel,
    MessageOriginChat,
    MessageOriginHiddenUser,
    MessageOriginUser,
    Update,
)
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import ApplicationHandlerStop, ContextTypes

from aria import commands, control
from aria.agent.provenance import untrusted_sources
from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import MAX_ID, REFUSALS, PressResult, parse_callback
from aria.errors import LedgerUnavailable
from aria.knowledge.owner import MAX_LEARN_CHARS, learn_document
from aria.ledger.reports import format_usd
from aria.runs import retry_request
from aria.sanitize import clean_text
from aria.strangers import warn_stranger
from aria.telegram.attachments import (
    NOT_READ,
    UNREADABLE,
    attachment_kind,
    caption_request,
    document_request,
    forwarded,
    read_telegram_document,
    voice_request,
)
from aria.telegram.channel import TelegramChannel
from aria.telegram.intake import Intake, to_record

log = logging.getLogger(__name__)
ACKNOWLEDGEMENTS: dict[PressResult, str] = {"approved": "Approved: running it now.", "rejected": "Rejected."}
EDIT_ACKNOWLEDGEMENT = "I answered your first version; send it again as a new message if you want a new answer."


def _aria(context: ContextTypes.DEFAULT_TYPE) -> Aria:
    return context.bot_data["aria"]  # type: ignore[no-any-return]


def _channel(context: ContextTypes.DEFAULT_TYPE) -> TelegramChannel:
    return context.bot_data["channel"]  # type: ignore[no-any-return]


def _intake(context: ContextTypes.DEFAULT_TYPE) -> Intake:
    return context.bot_data["intake"]  # type: ignore[no-any-return]


async def owner_guard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop every update from anyone but the owners: no reply, no model call, one ledger row. An owner's text
    message is recorded first (a redelivered copy of one already answered stops here)."""
    intake = _intake(context)
    try:
        await _guard(update, context, intake)
    finally:
        intake.settled(update.update_id)  # recorded (or needs no record): polling may confirm it now


async def _guard(update: Update, context: ContextTypes.DEFAULT_TYPE, intake: Intake) -> None:
    aria = _aria(context)
    user = update.effective_user
    kind = "callback" if update.callback_query else "message" if update.effective_message else "update"
    if user is None or user.id not in aria.settings.owner_ids:
        warn_stranger(aria, update)  # a typo'd ARIA_OWNER_IDS shows up in the log at once
        await _refuse(aria, update, f"{kind} from a non-owner")
    chat = update.effective_chat
    if chat is not None and chat.type != ChatType.PRIVATE and not aria.settings.allow_groups:
        # An owner in a group is heard by everyone there: answers (spend, hosts, drafts) stay in private chats.
        await _refuse(aria, update, f"owner's {kind} in a {chat.type} chat (ARIA_ALLOW_GROUPS is off)")
    if to_record(update):
        try:
            admitted = intake.admit(update)
        except LedgerUnavailable:
            return  # the run service tells the owner it cannot act
        if admitted is None:
            log.info("update %s was answered already; not again", update.update_id)
            raise ApplicationHandlerStop


async def _refuse(aria: Aria, update: Update, reason: str) -> NoReturn:
    """No reply, no model call: one ledger row (a press is answered aside, else its button spins)."""
    user = update.effective_user
    with contextlib.suppress(LedgerUnavailable):  # refused all the same; the log line below is the record
        aria.ledger.record_event("telegram", status="refused", verified=False,
                                 delivery_id=f"update:{update.update_id}", reason=reason,
                                 user_id=user.id if user else None)
    log.info("refused update %s from user %s: %s", update.update_id, user.id if user else "unknown", reason)
    if update.callback_query is not None:
        await _answer_press(update, "Not allowed.")
    raise ApplicationHandlerStop


async def command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any /command: answered by the channel-neutral commands, replies written before they are sent."""
    message = update.effective_message
    if message is None or update.effective_chat is None or not message.text:
        return
    name = message.text.split()[0].lstrip("/").split("@")[0].lower()
    aria = _aria(context)
    user_id = update.effective_user.id if update.effective_user else None
    chat_id = update.effective_chat.id
    replies = await commands.answer(aria, name, list(context.args or []), chat_id=chat_id, user_id=user_id,
                                    raw=message.text)
    await commands.send(aria, _channel(context), chat_id, replies)
    event_id = _intake(context).event_of.pop(update.update_id, None)
    if event_id is not None:
        _intake(context).processed(event_id)


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Free text from the owner: a run, answered through the channel. A forwarded message is someone else's words:
    it is fenced as data and taints the run with its origin."""
    message = update.effective_message
    if message is None or update.effective_chat is None or not message.text:
        return
    incoming = forwarded(forward_origin(message), clean_text(message.text))
    await _aria(context).runs.handle(Request(text=incoming.text, trigger=incoming.trigger, channel="telegram",
                                             chat_id=update.effective_chat.id,
                                             user_id=update.effective_user.id if update.effective_user else None,
                                             intake_id=_intake(context).event_of.pop(update.update_id, None),
                                             sources=incoming.sources),
                                     _channel(context))


async def attachment(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo, document or voice note: its caption, its text (fenced, tainting the run) or its transcript made
    into a run (see aria.telegram.attachments), or a clear answer saying what would work."""
    message, chat = update.effective_message, update.effective_chat
    if message is None or chat is None:
        return
    aria, intake = _aria(context), _intake(context)
    event_id = intake.event_of.pop(update.update_id, None)
    origin = forward_origin(message)
    user_id = update.effective_user.id if update.effective_user else None
    if not aria.ledger.health.writable:  # nothing is downloaded or paid for while nothing can be recorded
        await aria.runs.handle(Request(text=f"({attachment_kind(message)})", channel="telegram", chat_id=chat.id,
                                       user_id=user_id), _channel(context))  # refused there, with the reason
        return
    if message.document is not None and origin is None and is_learn(message.caption):
        await _learn(aria, context, message, chat.id)
        if event_id is not None:
            intake.processed(event_id)
        return
    try:
        if message.voice is not None:
            incoming = await voice_request(message, origin, aria.transcriber, event_id)
        elif message.document is not None:
            incoming = await document_request(message, origin, aria.settings.document_max_bytes)
        else:
            incoming = caption_request(message, origin)
            if message.media_group_id is not None:  # the album is answered: its other photos need no reply
                aria.ledger.claim_flag(f"album:{chat.id}:{message.media_group_id}", str(update.update_id))
    except NOT_READ as refusal:
        # An album is one update per photo, the caption on one of them: the others are not told off one by one.
        album = message.media_group_id
        if album is None or aria.ledger.claim_flag(f"album:{chat.id}:{album}", str(update.update_id)):
            await aria.runs.reply(_channel(context), chat.id, str(refusal))
        if event_id is not None:
            intake.processed(event_id)
        return
    await aria.runs.handle(Request(text=incoming.text, trigger=incoming.trigger, channel="telegram", chat_id=chat.id,
                                   user_id=user_id, intake_id=event_id, sources=incoming.sources), _channel(context))


def is_learn(caption: str | None) -> bool:
    """A document captioned `/learn`: to keep as notes rather than to answer about."""
    words = (caption or "").split()
    return bool(words) and words[0].lower().split("@", 1)[0] == "/learn"


async def _learn(aria: Aria, context: ContextTypes.DEFAULT_TYPE, message: Message, chat_id: int) -> None:
    """Read the document (runbooks may be larger than a document to answer about) and keep its passages as notes."""
    try:
        document = await read_telegram_document(message, max(aria.settings.document_max_bytes, MAX_LEARN_CHARS))
    except NOT_READ as refusal:
        await aria.runs.reply(_channel(context), chat_id, str(refusal))
        return
    reply = await asyncio.to_thread(learn_document, aria.knowledge, document.name, document.text)
    await aria.runs.reply(_channel(context), chat_id, reply)


def forward_origin(message: Message) -> str | None:
    """Who wrote a forwarded message, as the owner would name them; None when the owner wrote it."""
    origin = message.forward_origin
    if origin is None:
        return None
    if isinstance(origin, MessageOriginUser):
        user = origin.sender_user
        return f"{user.full_name} (@{user.username})" if user.username else user.full_name
    if isinstance(origin, MessageOriginHiddenUser):
        return origin.sender_user_name
    if isinstance(origin, MessageOriginChat):
        return origin.sender_chat.title or "a chat"
    if isinstance(origin, MessageOriginChannel):
        return origin.chat.title or "a channel"
    return "someone else"


async def edited(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An edited message: acknowledged, never a second billed run (the first version was answered, or is being)."""
    if update.effective_chat is not None:
        await _aria(context).runs.reply(_channel(context), update.effective_chat.id, EDIT_ACKNOWLEDGEMENT)


async def unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Anything Aria does not read (stickers, videos, locations): say what it can read."""
    if update.effective_chat is not None:
        await _aria(context).runs.reply(_channel(context), update.effective_chat.id, UNREADABLE)


async def approval_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An Approve, Reject or Details press: decided atomically, acted on at once; the press is answered aside."""
    query = update.callback_query
    assert query is not None
    aria = _aria(context)
    press = parse_callback(query.data)
    if press is None:
        _refused_press(aria, query.from_user.id, "malformed approval button")
        await _answer_press(update, "That button is not recognised.")
        return
    chat_id = update.effective_chat.id if update.effective_chat else query.from_user.id
    if press.verb == "d":
        await _answer_press(update, None)
        await aria.runs.reply(_channel(context), chat_id, details_text(aria, press.approval_id))
        return

    async def acknowledge(result: PressResult) -> None:
        await _answer_press(update, ACKNOWLEDGEMENTS.get(result) or REFUSALS.get(result, "Nothing was done."))

    await aria.runs.decide(press, query.from_user.id, _channel(context), acknowledge)


def details_text(aria: Aria, approval_id: int) -> str:
    """What an approval would do, in full."""
    approval = aria.approvals.get(approval_id)
    if approval is None:
        return "That approval does not exist."
    run = aria.ledger.run(approval.run_id) if approval.run_id else None
    arguments = json.dumps(json.loads(approval.args_json), indent=2, ensure_ascii=False)
    lines = [f"Approval {approval.id}: {approval.summary}", f"Tool: {approval.tool} ({approval.risk})",
             f"Arguments:\n{arguments}", f"Status: {approval.status}, expires {approval.expires_at:%Y-%m-%d %H:%M} UTC"]
    if run is not None:
        lines.append(f"Asked: {run.request[:300]}")
        read = untrusted_sources(aria.ledger, approval.run_id or 0)
        lines.append(f"Read before asking (not your words): {', '.join(read)}" if read else
                     "Read before asking: nothing untrusted")
    return "\n".join(lines)


async def retry_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"Retry", "Retry with strong model", "Allow more budget once": run the original request again, once."""
    query = update.callback_query
    assert query is not None
    aria = _aria(context)
    _, kind, raw_id = (query.data or "").split(":", 2) if (query.data or "").count(":") == 2 else ("", "", "")
    valid_id = raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 19 and int(raw_id) <= MAX_ID
    run = aria.ledger.run(int(raw_id)) if valid_id else None
    chat = update.effective_chat
    if run is None or chat is None or run.chat_id != chat.id or kind not in ("strong", "budget", "again", "raise"):
        await _answer_press(update, "That button does not refer to anything I can retry.")
        return
    if not aria.ledger.claim_flag(f"retry:{run.id}:{kind}", str(update.update_id)):
        await _answer_press(update, "Already retried.")
        return
    if kind == "raise":  # a day-capped refusal: today's cap goes up once, then the request runs again
        raised = control.raise_today(aria, query.from_user.id, chat.id, run.id or 0)
        await _answer_press(update, f"Today's cap raised by {format_usd(raised)}; retrying…")
    else:
        await _answer_press(update, "Retrying…")
    try:
        await query.edit_message_reply_markup(reply_markup=None)
    except TelegramError as exc:  # the buttons staying is cosmetic; the retry below is what matters
        log.info("could not remove the retry buttons: %s", exc)
    await aria.runs.handle(retry_request(aria.ledger, run, kind, chat.id, query.from_user.id), _channel(context))


async def change_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Confirm or Cancel under a proposed change (/budget): applied once; the buttons go, the outcome is told."""
    query = update.callback_query
    assert query is not None
    parts = (query.data or "").split(":")
    if len(parts) != 3 or parts[2] not in ("y", "n"):
        await unknown_button(update, context)
        return
    aria = _aria(context)
    text = control.decide_text(aria, parts[1], confirm=parts[2] == "y", user_id=query.from_user.id)
    await _answer_press(update, text.split("\n", 1)[0][:200])
    with contextlib.suppress(TelegramError):  # the buttons staying is cosmetic; the decision is recorded
        await query.edit_message_reply_markup(reply_markup=None)
    chat_id = update.effective_chat.id if update.effective_chat else query.from_user.id
    await aria.runs.reply(_channel(context), chat_id, text)


async def continue_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"Continue" under an answer cut at the output limit: the same run carries on, once, within its caps."""
    query = update.callback_query
    assert query is not None
    aria = _aria(context)
    raw_id = (query.data or "").removeprefix("continue:")
    valid_id = raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 19 and int(raw_id) <= MAX_ID
    run = aria.ledger.run(int(raw_id)) if valid_id else None
    chat = update.effective_chat
    if run is None or run.id is None or chat is None or run.chat_id != chat.id:
        await _answer_press(update, "That button does not refer to an answer I can continue.")
        return
    if not aria.ledger.claim_continuation(run.id):  # one press carries it on; a second finds nothing to take
        await _answer_press(update, "Already continued.")
        return
    await _answer_press(update, "Continuing…")
    try:
        await query.edit_message_reply_markup(reply_markup=None)
    except TelegramError as exc:  # the button staying is cosmetic
        log.info("could not remove the continue button: %s", exc)
    await aria.runs.carry_on(run.id, _channel(context), chat.id, claimed=True)


async def unknown_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Callback data that names nothing known: answer the press, change nothing."""
    query = update.callback_query
    assert query is not None
    _refused_press(_aria(context), query.from_user.id, "unknown callback data")
    await _answer_press(update, "That button is not recognised.")


def _refused_press(aria: Aria, user_id: int, reason: str) -> None:
    try:
        aria.ledger.record_event("telegram", status="refused", verified=True, reason=reason, user_id=user_id)
    except LedgerUnavailable:
        log.warning("refused a button press (%s); not recorded: the ledger cannot be written", reason)


async def _answer_press(update: Update, text: str | None) -> None:
    """Answer a button press, best effort: a failure here (a 5xx, a press too old) must not stop anything."""
    query = update.callback_query
    if query is None:
        return
    try:
        await query.answer(text)
    except TelegramError as exc:
        log.info("could not answer button press %s: %s", query.id[:64], exc)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Record handler errors and tell the owner, instead of leaving silence."""
    aria = _aria(context)
    error = context.error or RuntimeError("unknown error")
    log.error("handler error: %s", error, exc_info=error)
    aria.ledger.add_failure("telegram", error, "reported")
    if isinstance(update, Update) and update.effective_chat is not None and update.effective_user is not None \
            and update.effective_user.id in aria.settings.owner_ids:
        detail = str(error) if isinstance(error, LedgerUnavailable) else type(error).__name__
        await aria.runs.reply(_channel(context), update.effective_chat.id,
                              f"Something went wrong handling that ({detail}); it is recorded.")
    # The owner was told: the recorded message is done, not handed to every later start again. (A message the
    # ledger could not take stays, for the start after the outage.)
    event_id = _intake(context).event_of.pop(update.update_id, None) if isinstance(update, Update) else None
    if event_id is not None and not isinstance(error, LedgerUnavailable):
        _intake(context).processed(event_id)
