"""The Accept / Keep-disabled buttons under a changed MCP tool definition (aria.mcp.pins)."""

from __future__ import annotations

import contextlib

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from aria.mcp.hub import parse_callback
from aria.telegram import handlers


async def mcp_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An owner's decision on a changed tool definition: recorded, the buttons removed, the outcome said. Data
    that names nothing is refused (and recorded) as any unknown button is."""
    query = update.callback_query
    assert query is not None
    parsed = parse_callback(query.data)
    if parsed is None:
        await handlers.unknown_button(update, context)
        return
    aria = handlers._aria(context)
    decision, pin_id, digest = parsed
    text = aria.mcp.decide(pin_id, digest, decision)
    await handlers._answer_press(update, text.split("\n", 1)[0][:200])
    with contextlib.suppress(TelegramError):  # the buttons staying is cosmetic; the decision is recorded
        await query.edit_message_reply_markup(reply_markup=None)
    chat_id = update.effective_chat.id if update.effective_chat else query.from_user.id
    await aria.runs.reply(handlers._channel(context), chat_id, text)
