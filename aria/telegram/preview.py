"""The answer as it is written: a draft in private chats (sendMessageDraft, Bot API 9.5), else edits of one message.

The model's stream calls `update` with the answer so far; a background task shows the newest text at most once per
interval, the first time once the run has taken a moment (a quick answer arrives whole, with no preview call), so a
fast model costs a bounded number of Bot API calls and a slow one shows every piece. A 429's `retry_after` is waited
out by skipping updates, never by holding up the stream. Drafts are ephemeral previews: the final answer is still
one normal message (or several), sent from the outbox when the run ends.

A Bot API without drafts (an older server, an emulator) answers the first draft with an error: from then on this
process previews by editing the run's progress message instead, which the final answer then replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from telegram import Bot
from telegram.constants import MessageLimit, ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError

from aria.telegram.markup import plain_text, split_html, to_html
from aria.telegram.progress import ProgressMessage

log = logging.getLogger(__name__)

PREVIEW_EVERY = 1.0  # seconds between two updates of one preview (Telegram allows about one per second per chat)
PREVIEW_AFTER = 0.4  # an answer complete sooner than this after its run began needs no preview (nor its API call)


class DraftSupport:
    """Whether this Bot API serves sendMessageDraft: unknown until the first try, then remembered."""

    def __init__(self) -> None:
        self.available: bool | None = None


class AnswerPreview:
    """Shows the newest text of one run's answer, throttled, as a draft or by editing the progress message."""

    def __init__(self, bot: Bot, chat_id: int, draft_id: int, progress: ProgressMessage, support: DraftSupport, *,
                 every: float = PREVIEW_EVERY, after: float = PREVIEW_AFTER) -> None:
        self.bot, self.chat_id, self.draft_id = bot, chat_id, draft_id
        self.progress = progress
        self.support = support
        self.every = every
        # Drafts exist for private chats only (a user's chat id is positive, a group's negative).
        self._drafts = chat_id > 0
        self._latest = ""
        self._shown = ""
        self._next_at = time.monotonic() + after
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def update(self, text: str) -> None:
        """The answer so far; shown soon (never blocks the caller)."""
        if self._stopped or not text.strip():
            return
        self._latest = text
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name=f"preview {self.chat_id}")

    async def close(self) -> None:
        """Stop previewing: the final answer goes out through the outbox."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pump(self) -> None:
        while not self._stopped and self._latest != self._shown:
            wait = self._next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            text = self._latest
            try:
                await self._show(text)
            except RetryAfter as exc:  # left after the rate limiter's own retries
                retry_after = exc.retry_after
                seconds = retry_after.total_seconds() if hasattr(retry_after, "total_seconds") else float(retry_after)
                self._next_at = time.monotonic() + seconds
                continue
            except TelegramError as exc:
                if _transient(exc):  # a lost preview is cosmetic; the next update tries again
                    log.info("answer preview not shown: %s", exc)
                else:
                    log.info("answer preview stopped: %s", exc)
                    self._stopped = True
                    return
            self._shown = text
            self._next_at = time.monotonic() + self.every

    async def _show(self, text: str) -> None:
        html = _tail(to_html(text))
        if self._drafts and self.support.available is not False:
            try:
                await self._send(html, draft=True)
                self.support.available = True
                return
            except TelegramError as exc:
                # A 429, a lost connection, or drafts that worked before: this call failed, not the method.
                if isinstance(exc, RetryAfter) or _transient(exc) or self.support.available:
                    raise
                log.warning("this Bot API has no sendMessageDraft (%s); previews edit a message instead", exc)
                self.support.available = False
        await self._send(html, draft=False)

    async def _send(self, html: str, *, draft: bool) -> None:
        """One preview call; markup Telegram refuses (half-written Markdown) is shown as plain text."""
        try:
            await self._call(html, ParseMode.HTML, draft=draft)
        except BadRequest as exc:
            if "parse" not in str(exc).lower():
                raise
            await self._call(plain_text(html), None, draft=draft)

    async def _call(self, text: str, parse_mode: str | None, *, draft: bool) -> None:
        if draft:
            await self.bot.send_message_draft(self.chat_id, self.draft_id, text, parse_mode=parse_mode)
        else:
            await self.progress.show(text, parse_mode=parse_mode)


def _transient(exc: TelegramError) -> bool:
    """A timeout or a lost connection (PTB's BadRequest is a NetworkError too, but it is an answer)."""
    return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)


def _tail(html: str) -> str:
    """What fits one message: the part being written now (earlier parts are done and arrive with the answer)."""
    return split_html(html, MessageLimit.MAX_TEXT_LENGTH)[-1]
