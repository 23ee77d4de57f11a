"""Telegram side of shadow deployment: the 👍/👎 presses on proposals, a reply to a proposal as its note, and the
Promote press on a suggestion. Thin: parse, call `aria.rollout`, tell the owner what changed."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from aria.rollout import parse_judge, parse_promote
from aria.telegram import handlers

JUDGED = {"judged": "Noted, thank you.", "changed": "Changed your answer.", "same": "Already noted.",
          "not_found": "That proposal does not exist."}


async def judge_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """👍 or 👎 on "I would have done X": recorded; a demotion or a promotion suggestion follows as a message."""
    query = update.callback_query
    assert query is not None
    aria = handlers._aria(context)
    parsed = parse_judge(query.data)
    if parsed is None:
        await handlers.unknown_button(update, context)
        return
    outcome, notices = aria.rollout.judge(parsed[0], parsed[1], query.from_user.id)
    await handlers._answer_press(update, JUDGED[outcome])
    chat_id = update.effective_chat.id if update.effective_chat else query.from_user.id
    for notice in notices:
        await aria.runs.reply(handlers._channel(context), chat_id, notice.text, actions=notice.actions)


async def promote_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The owner's press on a promotion suggestion: the only way a skill moves up."""
    query = update.callback_query
    assert query is not None
    aria = handlers._aria(context)
    suggestion = parse_promote(query.data)
    if suggestion is None:
        await handlers.unknown_button(update, context)
        return
    said = aria.rollout.promote(suggestion, query.from_user.id)
    await handlers._answer_press(update, said[:200])
    chat_id = update.effective_chat.id if update.effective_chat else query.from_user.id
    await aria.runs.reply(handlers._channel(context), chat_id, said)


async def text_or_note(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A reply to a proposal's message is the owner's note on it; any other text is a request as usual."""
    message = update.effective_message
    chat = update.effective_chat
    replied = message.reply_to_message if message is not None else None
    proposal = (handlers._aria(context).rollout.proposal_for_message(chat.id, replied.message_id)
                if chat is not None and replied is not None else None)
    if message is None or chat is None or proposal is None or proposal.id is None or not message.text:
        await handlers.text(update, context)
        return
    aria = handlers._aria(context)
    aria.rollout.add_note(proposal.id, message.text)
    await aria.runs.reply(handlers._channel(context), chat.id, f"Noted on proposal {proposal.id}.")
    intake = handlers._intake(context)
    event_id = intake.event_of.pop(update.update_id, None)
    if event_id is not None:
        intake.processed(event_id)
