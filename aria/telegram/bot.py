"""Builds the python-telegram-bot Application around an Aria instance."""

from __future__ import annotations

import logging

from telegram import Bot, BotCommand, Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import BaseRequest

from aria.app import Aria
from aria.jobs import restore_reminders, schedule_reminder
from aria.outbox import OutboxSender
from aria.telegram import approval_handlers, handlers
from aria.views import COMMANDS

log = logging.getLogger(__name__)
CONCURRENT_UPDATES = 8  # other chats and runs go on while one run works
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
SENDER = "outbox_sender"


def build_application(aria: Aria, *,  # type: ignore[type-arg]
                      get_updates_request: BaseRequest | None = None) -> Application:
    """A ready Application: owner guard first, then commands, buttons and text."""
    settings = aria.settings
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    builder = Application.builder()
    if get_updates_request is not None:
        builder = builder.get_updates_request(get_updates_request)
    application = (
        builder
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(settings.bot_api_base)
        .base_file_url(f"{settings.telegram_api_url}/file/bot")
        .concurrent_updates(CONCURRENT_UPDATES)
        .rate_limiter(AIORateLimiter(max_retries=3))
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
        .build()
    )
    application.bot_data["aria"] = aria
    application.add_handler(TypeHandler(Update, handlers.owner_guard), group=-1)
    application.add_handler(CommandHandler(["start", "help"], handlers.start))
    application.add_handler(CommandHandler("skills", handlers.skills))
    application.add_handler(CommandHandler("status", handlers.status))
    application.add_handler(CommandHandler("digest", handlers.digest))
    application.add_handler(CommandHandler("cost", handlers.cost))
    application.add_handler(CommandHandler("approvals", approval_handlers.list_approvals))
    application.add_handler(CommandHandler("pause", handlers.pause))
    application.add_handler(CommandHandler("resume", handlers.resume))
    application.add_handler(CallbackQueryHandler(approval_handlers.approval_button, pattern=r"^ap:"))
    application.add_handler(CallbackQueryHandler(handlers.retry_button, pattern=r"^retry:"))
    application.add_handler(CallbackQueryHandler(handlers.unknown_button))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, handlers.text))
    application.add_handler(MessageHandler(filters.COMMAND, handlers.start))
    application.add_handler(MessageHandler(~filters.TEXT & ~filters.StatusUpdate.ALL, handlers.unsupported))
    application.add_error_handler(handlers.on_error)
    return application


async def _post_init(application: Application) -> None:  # type: ignore[type-arg]
    aria: Aria = application.bot_data["aria"]
    interrupted = aria.ledger.mark_interrupted()
    if interrupted:
        log.warning("%d run(s) from a previous process were marked interrupted", interrupted)
    for stuck in aria.approvals.recover_interrupted():
        log.warning("approval %s was executing when the process stopped; marked failed, not re-run", stuck.id)
    await application.bot.set_my_commands([BotCommand(name, about) for name, about in COMMANDS])
    sender = OutboxSender(aria.outbox, application.bot, aria.ledger)
    application.bot_data[SENDER] = sender
    schedule_jobs(aria, application.bot)
    aria.scheduler.start()
    await sender.start()
    await approval_handlers.expire_due(aria, application.bot)


def schedule_jobs(aria: Aria, bot: Bot) -> None:
    """Jobs restored from the ledger (approval expiries, reminders) and the daily digest; ids are fixed so a
    restart replaces rather than duplicates them. Nothing here polls: each job runs when it is due."""
    for approval in aria.approvals.pending():
        approval_handlers.schedule_expiry(aria, bot, approval)
    aria.on_reminder = lambda reminder_id, due_at: schedule_reminder(aria, aria.outbox, reminder_id, due_at)
    restore_reminders(aria, aria.outbox)
    aria.digests.schedule(aria.scheduler)


async def _post_stop(application: Application) -> None:  # type: ignore[type-arg]
    # Handlers have finished by now; anything still marked running did not, and says so.
    aria: Aria = application.bot_data["aria"]
    sender: OutboxSender | None = application.bot_data.get(SENDER)
    if sender is not None:
        await sender.stop()
    aria.scheduler.shutdown()
    aria.ledger.mark_interrupted()


async def _post_shutdown(application: Application) -> None:  # type: ignore[type-arg]
    aria: Aria = application.bot_data["aria"]
    await aria.aclose()
