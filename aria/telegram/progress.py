"""Live status while a run works: the typing indicator, and one progress message edited per step (the answer, an
outbox row, replaces it when it is delivered)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from telegram import Bot, Message
from telegram.constants import ChatAction
from telegram.error import TelegramError

TYPING_EVERY = 4.5  # Telegram shows "typing…" for about five seconds per chat action
TYPING_AFTER = 1.0  # an answer quicker than this needs no indicator (and saves a Bot API call)


class Typing:
    """Keeps "typing…" visible until the block ends, once it has taken longer than a moment."""

    def __init__(self, bot: Bot, chat_id: int) -> None:
        self.bot, self.chat_id = bot, chat_id
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Typing:
        # A timer, not a sleeping task: most answers come before it fires, and cancelling it costs nothing.
        self._timer = asyncio.get_running_loop().call_later(TYPING_AFTER, self._start)
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TelegramError):  # a lost indicator is cosmetic; the answer still goes out
                await self.bot.send_chat_action(self.chat_id, ChatAction.TYPING)
            await asyncio.sleep(TYPING_EVERY)


class ProgressMessage:
    """One message that shows the current step."""

    def __init__(self, bot: Bot, chat_id: int) -> None:
        self.bot, self.chat_id = bot, chat_id
        self.message: Message | None = None

    async def note(self, text: str) -> None:
        """Show what the run is doing now."""
        with contextlib.suppress(TelegramError):  # progress is best effort; the final answer is not
            await self.show(f"⏳ {text}")

    async def show(self, text: str, *, parse_mode: str | None = None) -> None:
        """Send the message, or edit it once sent; Telegram's errors propagate."""
        if self.message is None:
            self.message = await self.bot.send_message(self.chat_id, text, parse_mode=parse_mode)
        else:
            await self.bot.edit_message_text(text, chat_id=self.chat_id, message_id=self.message.message_id,
                                             parse_mode=parse_mode)
