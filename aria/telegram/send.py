"""Sending text that always arrives: split at Telegram's limit, markup falling back to plain text."""

from __future__ import annotations

import logging

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message
from telegram.error import BadRequest

from aria.agent.outcome import Action
from aria.outbox import split_text

log = logging.getLogger(__name__)


def keyboard(actions: list[Action]) -> InlineKeyboardMarkup | None:
    """Inline buttons for an outcome's actions, one per row."""
    if not actions:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(a.label, callback_data=a.data)] for a in actions])


async def send_text(bot: Bot, chat_id: int, text: str, *, parse_mode: str | None = None,
                    actions: list[Action] | None = None) -> list[Message]:
    """Send a possibly long text; buttons go under the last chunk. Rejected markup is resent as plain text."""
    sent: list[Message] = []
    chunks = split_text(text)
    for index, chunk in enumerate(chunks):
        markup = keyboard(actions or []) if index == len(chunks) - 1 else None
        try:
            sent.append(await bot.send_message(chat_id, chunk, parse_mode=parse_mode, reply_markup=markup))
        except BadRequest as exc:
            if parse_mode is None or "parse" not in str(exc).lower():
                raise
            log.warning("Telegram rejected the markup; sending plain text instead")
            sent.append(await bot.send_message(chat_id, chunk, reply_markup=markup))
    return sent
