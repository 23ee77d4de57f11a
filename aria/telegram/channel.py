"""Telegram as a channel of the run service: typing and a progress message while a run works, delivery of outbox
rows through the Bot API (in order, retried), and a direct send for when the ledger cannot be written."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from types import TracebackType

from telegram import Bot, BotCommand, Update
from telegram.error import TelegramError

from aria.channel import Live, Quiet
from aria.ledger import Ledger
from aria.outbox import Outbox
from aria.telegram.intake import Intake
from aria.telegram.preview import PREVIEW_EVERY, AnswerPreview, DraftSupport
from aria.telegram.progress import ProgressMessage, Typing
from aria.telegram.send import send_text
from aria.telegram.sender import CHANNEL, OutboxSender
from aria.views import COMMANDS

log = logging.getLogger(__name__)
# Draft ids only need to differ between the runs a chat sees at once; animated changes share one id.
_DRAFT_IDS = itertools.count(1)


class TelegramLive:
    """"typing…" after a moment, one progress message edited per step (the answer replaces it), and the answer
    previewed as the model writes it."""

    def __init__(self, bot: Bot, chat_id: int, drafts: DraftSupport, *, preview_every: float = PREVIEW_EVERY) -> None:
        self._typing = Typing(bot, chat_id)
        self._progress = ProgressMessage(bot, chat_id)
        self._preview = AnswerPreview(bot, chat_id, next(_DRAFT_IDS), self._progress, drafts, every=preview_every)

    @property
    def message_id(self) -> int | None:
        """The progress message, once a step has shown one."""
        return self._progress.message.message_id if self._progress.message is not None else None

    async def __aenter__(self) -> TelegramLive:
        await self._typing.__aenter__()
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self._preview.close()
        await self._typing.__aexit__(*exc)

    async def note(self, text: str) -> None:
        """Show the current step."""
        await self._progress.note(text)

    def draft(self, text: str) -> None:
        """Preview the answer so far."""
        self._preview.update(text)


class TelegramChannel:
    """Requests from Telegram updates; replies through the outbox and the Bot API."""

    name = CHANNEL

    def __init__(self, bot: Bot, outbox: Outbox, ledger: Ledger, *, intake: Intake | None = None,
                 update_queue: asyncio.Queue[object] | None = None, preview_every: float = PREVIEW_EVERY) -> None:
        self.bot = bot
        self.ledger = ledger
        self.sender = OutboxSender(outbox, bot, ledger)
        self.intake = intake
        self.update_queue = update_queue
        self.drafts = DraftSupport()
        self.preview_every = preview_every

    def live(self, chat_id: int | None) -> Live:
        """Typing and progress in a chat (nothing without one)."""
        if chat_id is None:
            return Quiet()
        return TelegramLive(self.bot, chat_id, self.drafts, preview_every=self.preview_every)

    async def deliver(self, outbox_id: int) -> int | None:
        """Send a written row now when its chat has nothing older waiting; else the sender takes it in order."""
        return await self.sender.send_now(outbox_id)

    async def tell_directly(self, chat_id: int, text: str) -> bool:
        """Send without the ledger: best effort, once."""
        try:
            await send_text(self.bot, chat_id, text)
        except TelegramError as exc:
            log.error("could not tell chat %s directly: %s", chat_id, exc)
            return False
        return True

    async def start(self) -> None:
        """Register the command menu, start delivering (rows left from an earlier process go out first), and hand
        the Application the owner's messages an earlier process recorded but never answered."""
        try:
            await self.bot.set_my_commands([BotCommand(name, about) for name, about in COMMANDS])
        except TelegramError as exc:  # the menu is a convenience; the commands work without it
            self.ledger.add_failure("telegram", exc, "reported")
        await self.sender.start()
        if self.intake is not None and self.update_queue is not None:
            for payload in self.intake.unprocessed():
                update = Update.de_json(json.loads(payload), self.bot)
                if update is not None:
                    await self.update_queue.put(update)

    async def stop(self) -> None:
        """Stop delivering after the message in flight."""
        await self.sender.stop()

    def api_succeeded(self) -> None:
        """A Bot API call succeeded: messages backing off go out now."""
        self.sender.api_succeeded()
