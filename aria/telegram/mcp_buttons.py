"""The Accept / Keep-disabled buttons under a changed MCP tool definition (aria.mcp.pins)."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from aria.app import Aria
from aria.mcp.hub import parse_callback
from aria.telegram.channel import TelegramChannel

log = logging.getLogger(__name__)


async def mcp_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An owner's decision on a changed tool definition: recorded, the buttons removed, the outcome said."""
    query = update.callback_query
    assert query is not None
    aria: Aria = context.bot_data["aria"]
    channel: TelegramChannel = context.bot_data["channel"]
    parsed = parse_callback(query.data)
    try:
        await query.answer()
    except TelegramError as exc:  # answering is cosmetic; the decision below is what matters
        log.info("could not answer an MCP button press: %s", exc)
    if parsed is None:
        text = "That button is not recognised."
    else:
        decision, pin_id, digest = parsed
        text = aria.mcp.decide(pin_id, digest, decision)
        try:
            await query.edit_message_reply_markup(reply_markup=None)
        except TelegramError as exc:
            log.info("could not remove the MCP review buttons: %s", exc)
    chat_id = update.effective_chat.id if update.effective_chat else query.from_user.id
    await aria.runs.reply(channel, chat_id, text)
