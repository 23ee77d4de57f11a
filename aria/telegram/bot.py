"""Builds the python-telegram-bot Application around an Aria instance and its Telegram channel.

The Application only receives updates and runs handlers; Aria owns its own lifecycle (`Aria.start` with the
channel, `Aria.stop`), so `aria run` and the tests start and stop it the same way.
"""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from aria import commands
from aria.app import Aria
from aria.telegram import handlers, shadow
from aria.telegram.channel import TelegramChannel
from aria.telegram.intake import Intake
from aria.telegram.mcp_buttons import mcp_button
from aria.telegram.request import SignallingRequest
from aria.telegram.watchdog import WatchedRequest

log = logging.getLogger(__name__)
CONCURRENT_UPDATES = 8  # other chats and runs go on while one run works
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]


def build_application(aria: Aria, *,
                      get_updates_request: SignallingRequest | None = None) -> Application:  # type: ignore[type-arg]
    """A ready Application: owner guard first, then commands, buttons and text. Its Telegram channel is in
    `bot_data["channel"]`; any Bot API call that succeeds wakes the channel's backed-off messages."""
    settings = aria.settings
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    request = SignallingRequest()
    builder = Application.builder().request(request)
    if get_updates_request is not None:
        builder = builder.get_updates_request(get_updates_request)
    application = (
        builder
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(settings.bot_api_base)
        .base_file_url(f"{settings.telegram_api_url}/file/bot")
        .concurrent_updates(CONCURRENT_UPDATES)
        .rate_limiter(AIORateLimiter(max_retries=3))
        .build()
    )
    intake = Intake(aria.ledger)
    channel = TelegramChannel(application.bot, aria.outbox, aria.ledger, intake=intake,
                              update_queue=application.update_queue, preview_every=aria.settings.preview_seconds)
    for signalling in (request, get_updates_request):
        if signalling is not None:
            signalling.listeners.append(channel.api_succeeded)
    if isinstance(get_updates_request, WatchedRequest):
        get_updates_request.intake = intake
    application.bot_data["aria"] = aria
    application.bot_data["channel"] = channel
    application.bot_data["intake"] = intake
    application.add_handler(TypeHandler(Update, handlers.owner_guard), group=-1)
    # Before commands and text: an edit of any message is acknowledged, never answered again.
    application.add_handler(MessageHandler(filters.UpdateType.EDITED, handlers.edited))
    application.add_handler(CommandHandler(list(commands.NAMES), handlers.command))
    application.add_handler(CallbackQueryHandler(handlers.approval_button, pattern=r"^ap:"))
    application.add_handler(CallbackQueryHandler(handlers.retry_button, pattern=r"^retry:"))
    application.add_handler(CallbackQueryHandler(handlers.change_button, pattern=r"^cfg:"))
    application.add_handler(CallbackQueryHandler(handlers.continue_button, pattern=r"^continue:\d+$"))
    application.add_handler(CallbackQueryHandler(mcp_button, pattern=r"^mcp:"))
    application.add_handler(CallbackQueryHandler(shadow.judge_button, pattern=r"^sh:"))
    application.add_handler(CallbackQueryHandler(shadow.promote_button, pattern=r"^ro:"))
    application.add_handler(CallbackQueryHandler(handlers.unknown_button))
    # A reply to a shadow proposal is a note on it; other text (replies included) is a request.
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND & filters.REPLY, shadow.text_or_note))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, handlers.text))
    application.add_handler(MessageHandler(filters.COMMAND, handlers.command))
    application.add_handler(MessageHandler(filters.PHOTO | filters.Document.ALL | filters.VOICE, handlers.attachment))
    application.add_handler(MessageHandler(~filters.TEXT & ~filters.StatusUpdate.ALL, handlers.unsupported))
    application.add_error_handler(handlers.on_error)
    return application


def channel_of(application: Application) -> TelegramChannel:  # type: ignore[type-arg]
    """The Telegram channel an Application was built with."""
    return application.bot_data["channel"]  # type: ignore[no-any-return]
