"""Delivering outbox rows through the Bot API: in order per chat, retried until Telegram takes them.

A background task sleeps until a kick (a row was written) or the next due time. An answer is sent at once by
`send_now` when nothing older waits for its chat. Any successful Bot API call (a getUpdates round trip included)
wakes rows that were backing off, so messages go out as soon as Telegram is back rather than after their backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from telegram import Bot
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter, TelegramError

from aria.errors import LedgerUnavailable
from aria.ledger import Ledger
from aria.ledger.models import Outbox as OutboxRow
from aria.outbox import (
    CAPTION_LIMIT,
    RETRY_BASE,
    RETRY_CAP,
    TEXT_LIMIT,
    Outbox,
    Part,
    Purpose,
    backoff_seconds,
    message_parts,
    row_actions,
)
from aria.telegram.markup import head_html, literal_html, plain_text, telegram_parts, to_html
from aria.telegram.send import keyboard

log = logging.getLogger(__name__)

CHANNEL = "telegram"
FLOOD_WAITS = 5  # 429s honoured in a row before the row backs off instead
Delivery = Literal["delivered", "later", "refused"]
Sleep = Callable[[float], Awaitable[None]]
# Rendered as Telegram HTML at send time; the stored text stays as written. Answers and notices are Markdown (the
# model's, or Aria's prose around them). Approvals and digests quote commands, globs and error texts that must show
# exactly (`rm /tmp/*_old*`), so they are escaped, not parsed. Other purposes go as plain text, as before.
MARKDOWN: frozenset[Purpose] = frozenset({"answer", "notice"})
LITERAL: frozenset[Purpose] = frozenset({"approval", "approval-edit", "digest"})


class OutboxSender:
    """Delivers due outbox rows through the Bot API; a background task sleeps until a kick or the next due time."""

    def __init__(self, outbox: Outbox, bot: Bot, ledger: Ledger, *, sleep: Sleep = asyncio.sleep,
                 retry_base: float = RETRY_BASE, retry_cap: float = RETRY_CAP) -> None:
        self.outbox = outbox
        self.bot = bot
        self.ledger = ledger
        self._sleep = sleep
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._backing_off = False
        outbox.subscribe(self.kick)

    async def flush(self) -> int:
        """Deliver everything due, in order; returns how many rows were delivered."""
        async with self._lock:  # one flush at a time, so no row is sent by two tasks
            delivered = 0
            stalled: set[int] = set()
            for row in self.outbox.pending(self.ledger.now(), CHANNEL):
                if self._stopping:
                    break
                if row.chat_id in stalled:
                    continue  # keep the chat's order: its older message is backing off
                result, _ = await self._deliver(row)
                if result == "delivered":
                    delivered += 1
                elif result == "later":
                    stalled.add(row.chat_id)
            return delivered

    async def send_now(self, outbox_id: int) -> int | None:
        """Deliver one row now when it is the oldest waiting for its chat, returning the message it became; else
        leave it to the queue, which keeps the chat's order (None)."""
        async with self._lock:
            row = self.outbox.head_row(outbox_id, CHANNEL)
            if row is None or self._stopping:
                self.kick()  # delivered already, or it waits behind an older message to its chat
                return None
            result, message_id = await self._deliver(row)
        if result != "delivered":
            self.kick()  # the timer for its retry
        return message_id

    def api_succeeded(self) -> None:
        """A Bot API call just succeeded: rows backing off after a failure need not wait out their backoff."""
        if not self._backing_off:
            return
        self._backing_off = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_backed_off)

    def _wake_backed_off(self) -> None:
        try:
            woken = self.outbox.wake_backed_off(CHANNEL)
        except LedgerUnavailable:
            return
        if woken:
            log.info("Telegram answers again: %d waiting message(s) go out now", woken)
            self._wake.set()

    def kick(self) -> None:
        """Ask for a flush soon; safe to call from any thread, a no-op before `start`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Start the background delivery task (rows left from a previous process go out first)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-sender")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the background task after the message in flight; undelivered rows stay for the next start.

        Cancelling a send whose request already reached Telegram would leave it unmarked and sent again after a
        restart, so the task gets `grace` seconds to finish the current message before it is cancelled.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=grace)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._stopping = False  # a direct flush() after stop still delivers

    async def _run(self) -> None:
        errors = 0
        while not self._stopping:
            self._wake.clear()  # before flushing, so a kick during the flush makes another round
            try:
                await self.flush()
                errors = 0
                delay = self._delay()
            except Exception as exc:  # a database or programming error must not end delivery for good
                log.exception("outbox flush failed")
                self.ledger.add_failure("outbox", exc, "retried")
                errors += 1
                delay = backoff_seconds(errors, self._retry_base, self._retry_cap)
            if not self._stopping:
                await self._wait(delay)

    def _delay(self) -> float | None:
        now = self.ledger.now()
        when = self.outbox.next_due(now)
        return None if when is None else max(0.0, (when - now).total_seconds())

    async def _wait(self, delay: float | None) -> None:
        if delay is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _deliver(self, row: OutboxRow) -> tuple[Delivery, int | None]:
        assert row.id is not None
        parts, parse_mode = _parts(row)
        message_id: int | None = None
        for index in range(self.outbox.parts_sent(row), len(parts)):
            last = index == len(parts) - 1
            try:
                message_id = await self._send_honouring_flood(row, parts[index], parse_mode, buttons=last,
                                                              replace=len(parts) == 1)
            except (BadRequest, Forbidden, ChatMigrated) as exc:  # Telegram will refuse this message every time
                if row.kind == "edit" and "not modified" in str(exc).lower():
                    break  # the message already shows this text
                self.ledger.add_failure("outbox", exc, "recorded", run_id=row.run_id)
                self.outbox.mark_refused(row.id, _describe(exc))
                log.warning("outbox message %s refused by Telegram: %s", row.id, exc)
                return "refused", None
            except TelegramError as exc:  # 5xx, network errors, time-outs, persistent flood control
                self._postpone(row, exc)
                return "later", None
            if not last:
                self.outbox.record_parts_sent(row.id, index + 1)
        self.outbox.mark_delivered(row.id, message_id, row=row, parts=len(parts))
        if row.kind != "edit" and row.edit_message_id is not None and message_id != row.edit_message_id:
            await self._drop_progress(row)
        return "delivered", message_id

    async def _drop_progress(self, row: OutboxRow) -> None:
        # The answer went out as new messages: the "working…" message it was meant to replace goes away.
        assert row.edit_message_id is not None
        with contextlib.suppress(TelegramError):
            await self.bot.delete_message(row.chat_id, row.edit_message_id)

    def _postpone(self, row: OutboxRow, exc: TelegramError) -> None:
        assert row.id is not None
        wait = backoff_seconds(row.attempts + 1, self._retry_base, self._retry_cap)
        if isinstance(exc, RetryAfter):
            wait = max(wait, _seconds(exc))
        retry_at = self.ledger.now() + dt.timedelta(seconds=wait)
        self.ledger.add_failure("outbox", exc, "retried", run_id=row.run_id)
        self.outbox.mark_failed(row.id, _describe(exc), retry_at)
        self._backing_off = True
        log.info("outbox message %s not delivered (%s); next attempt in %.1fs", row.id, exc, wait)

    async def _send_honouring_flood(self, row: OutboxRow, part: Part, parse_mode: str | None, *, buttons: bool,
                                    replace: bool) -> int:
        for _ in range(FLOOD_WAITS):
            try:
                return await self._send(row, part, parse_mode, buttons=buttons, replace=replace)
            except RetryAfter as exc:
                self.ledger.add_failure("outbox", exc, "retried", run_id=row.run_id)
                await self._sleep(_seconds(exc))
        return await self._send(row, part, parse_mode, buttons=buttons, replace=replace)  # a further 429 backs off

    async def _send(self, row: OutboxRow, part: Part, parse_mode: str | None, *, buttons: bool,
                    replace: bool) -> int:
        try:
            return await self._send_once(row, part, parse_mode, buttons=buttons, replace=replace)
        except BadRequest as exc:
            if parse_mode is None or "parse" not in str(exc).lower():
                raise
            # Markup Telegram cannot parse would be refused forever; the words still matter, so send them plain.
            log.warning("Telegram rejected the markup of outbox message %s; sending plain text", row.id)
            if parse_mode != row.parse_mode and part.text is not None:  # rendered here from Markdown
                part = Part(part.kind, plain_text(part.text))
            return await self._send_once(row, part, None, buttons=buttons, replace=replace)

    async def _send_once(self, row: OutboxRow, part: Part, parse_mode: str | None, *, buttons: bool,
                         replace: bool) -> int:
        markup = keyboard(row_actions(row)) if buttons else None
        if row.kind == "edit" or (replace and part.kind == "text" and row.edit_message_id is not None):
            assert row.edit_message_id is not None
            try:
                edited = await self.bot.edit_message_text(part.text or "", chat_id=row.chat_id,
                                                          message_id=row.edit_message_id, parse_mode=parse_mode,
                                                          reply_markup=markup)
                return row.edit_message_id if isinstance(edited, bool) else edited.message_id
            except BadRequest as exc:
                if row.kind == "edit" or "parse" in str(exc).lower():
                    raise
                # The progress message is gone or cannot be edited: the answer goes out as a new message.
        if part.kind == "photo":
            assert row.payload is not None
            message = await self.bot.send_photo(row.chat_id, photo=row.payload, caption=part.text,
                                                parse_mode=parse_mode, reply_markup=markup)
        elif part.kind == "document":
            assert row.payload is not None
            message = await self.bot.send_document(row.chat_id, document=row.payload, filename=row.file_name,
                                                   caption=part.text, parse_mode=parse_mode, reply_markup=markup)
        else:
            message = await self.bot.send_message(row.chat_id, part.text or "", parse_mode=parse_mode,
                                                  reply_markup=markup)
        return message.message_id


def _parts(row: OutboxRow) -> tuple[list[Part], str | None]:
    """The messages a row becomes and their parse mode: Markdown purposes rendered as HTML and split cleanly."""
    if row.kind == "document":
        return message_parts(row.text, photo=False, document=True), None  # a file and its plain caption
    photo = row.payload is not None
    markup = _render(row)
    if markup is None:
        parts = [Part("text", row.text)] if row.kind == "edit" else message_parts(row.text, photo=photo)
        return parts, row.parse_mode
    if row.kind == "edit":  # an edit is one message: what fits of it
        return [Part("text", head_html(markup, TEXT_LIMIT)[0])], "HTML"
    rendered = telegram_parts(markup, photo=photo, text_limit=TEXT_LIMIT, caption_limit=CAPTION_LIMIT)
    return [Part("photo" if caption else "text", text or None if caption else text)
            for text, caption in rendered], "HTML"


def _render(row: OutboxRow) -> str | None:
    """The row's text as Telegram HTML, or None when it goes as stored (its own parse mode, a plain purpose)."""
    if row.parse_mode is not None:
        return None
    if row.purpose in MARKDOWN:
        markup = to_html(row.text)
    elif row.purpose in LITERAL:
        markup = literal_html(row.text)
    else:
        return None
    return markup if plain_text(markup).strip() else None


def _seconds(exc: RetryAfter) -> float:
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
