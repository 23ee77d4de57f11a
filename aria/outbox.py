"""The outbox: every proactive message (digest, alert, reminder, approval request) is a ledger row first, then a send.

    enqueue ──> outbox row, due now ──> OutboxSender.flush ──> Bot API ──> delivered_at, message_id
                    ^                               │
                    │   429                         ├─ wait Retry-After, then the same message again
                    └── 5xx, network, time-out ─────┼─ next_attempt_at = now + jittered backoff (≤ 10 min), failure row
                                                    └─ 400, 403: refused for good: failure row, parked (kept, visible
                                                       as undelivered, never retried on its own)

A row is marked delivered as soon as the Bot API confirms it, so the outbox never sends a confirmed message again.
(A time-out after Telegram received a request is ambiguous; it is retried, because a message lost is worse than one
seen twice.) A row that becomes several Telegram messages (a long text, or a photo whose text exceeds the caption
limit) records each part as it arrives, so a retry resumes after the last delivered part. Messages to one chat keep
their order: a row waits while an older one to the same chat is backing off.

A parked row has `next_attempt_at` NULL after at least one attempt; a new row is due at its creation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, func, or_, update
from sqlmodel import Session, col, select
from telegram import Bot
from telegram.constants import MessageLimit
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter, TelegramError

from aria.agent.outcome import Action
from aria.ledger import KeyValue, Ledger, as_utc
from aria.ledger.models import Outbox as OutboxRow
from aria.telegram.send import keyboard, split_text

log = logging.getLogger(__name__)

CAPTION_LIMIT = int(MessageLimit.CAPTION_LENGTH)  # 1024
RETRY_BASE = 5.0  # seconds before the first retry of a failed send
RETRY_CAP = 600.0  # never wait longer than this between attempts
FLOOD_WAITS = 5  # 429s honoured in a row before the row backs off instead
ERROR_CHARS = 500
Delivery = Literal["delivered", "later", "refused"]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Part:
    """One Telegram message of an outbox row: the photo (with its caption) or a text chunk."""

    kind: Literal["photo", "text"]
    text: str | None


def message_parts(text: str, *, photo: bool) -> list[Part]:
    """How a row is sent: text in chunks of at most 4096 characters; a photo first, captioned with as much of the
    text as fits in 1024 characters, the rest following as text."""
    if not photo:
        return [Part("text", chunk) for chunk in split_text(text)]
    caption, rest = caption_split(text)
    return [Part("photo", caption or None), *(Part("text", chunk) for chunk in (split_text(rest) if rest else []))]


def caption_split(text: str, limit: int = CAPTION_LIMIT) -> tuple[str, str]:
    """(caption, rest): cut at a paragraph or line break where one is near the limit, so the caption ends cleanly."""
    text = text.strip()
    if len(text) <= limit:
        return text, ""
    window = text[:limit]
    cut = window.rfind("\n\n")
    if cut < limit // 4:
        cut = window.rfind("\n")
    if cut < limit // 4:
        cut = len(split_text(text, limit)[0])
    return text[:cut].rstrip(), text[cut:].strip()


def backoff_seconds(attempts: int, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> float:
    """Wait after the `attempts`-th failed attempt: exponential with jitter, so retries from a restart don't align."""
    exponential = min(cap, base * 2 ** max(0, attempts - 1))
    return random.uniform(exponential / 2, exponential)


def _actions_json(actions: list[Action] | None) -> str | None:
    return json.dumps([{"label": a.label, "data": a.data} for a in actions]) if actions else None


def row_actions(row: OutboxRow) -> list[Action]:
    """The buttons stored with a row."""
    return [Action(item["label"], item["data"]) for item in json.loads(row.reply_markup)] if row.reply_markup else []


_PARKED = (col(OutboxRow.delivered_at).is_(None), col(OutboxRow.next_attempt_at).is_(None), col(OutboxRow.attempts) > 0)


def _progress_key(outbox_id: int) -> str:
    return f"outbox:{outbox_id}:parts"


class Outbox:
    """The durable queue of proactive messages."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every enqueue (the sender subscribes its `kick`)."""
        self._listeners.append(listener)

    def enqueue(self, chat_id: int, text: str = "", *, photo: bytes | None = None, actions: list[Action] | None = None,
                parse_mode: str | None = None, purpose: str = "message", run_id: int | None = None,
                dedupe_key: str | None = None) -> int | None:
        """Queue a message; returns its id, or None when `dedupe_key` was already enqueued (send-once)."""
        if not text.strip() and photo is None:
            raise ValueError("an outbox message needs text or a photo")
        now = self.ledger.now()
        row = OutboxRow(chat_id=chat_id, kind="photo" if photo is not None else "text", text=text, payload=photo,
                        reply_markup=_actions_json(actions), dedupe_key=dedupe_key, created_at=now,
                        next_attempt_at=now, purpose=purpose, parse_mode=parse_mode, run_id=run_id)
        # The write transaction holds SQLite's write lock from its first statement, so check-then-insert is atomic.
        with self.ledger.write() as session:
            if dedupe_key is not None and session.exec(
                select(OutboxRow.id).where(col(OutboxRow.dedupe_key) == dedupe_key)
            ).first() is not None:
                return None
            session.add(row)
            session.flush()
            row_id = row.id
        for listener in self._listeners:
            listener()
        return row_id

    def pending(self, now: dt.datetime) -> list[OutboxRow]:
        """Undelivered rows that are due, oldest first; a chat whose oldest row is backing off waits behind it."""
        with self.ledger.read() as session:
            due, _ = self._plan(session, now)
            if not due:
                return []
            query = select(OutboxRow).where(col(OutboxRow.id).in_(due))
            return list(session.exec(query.order_by(col(OutboxRow.created_at), col(OutboxRow.id))))

    def next_due(self, now: dt.datetime) -> dt.datetime | None:
        """When the next row becomes due (now or earlier when one is due already); None when nothing waits."""
        with self.ledger.read() as session:
            due, wake = self._plan(session, now)
        return now if due else wake

    def _plan(self, session: Session, now: dt.datetime) -> tuple[list[int], dt.datetime | None]:
        # Only ids, chats and times: payloads (PNG charts) stay on disk until a row is actually sent.
        heads = session.exec(
            select(OutboxRow.id, OutboxRow.chat_id, OutboxRow.next_attempt_at)
            .where(col(OutboxRow.delivered_at).is_(None),
                   or_(col(OutboxRow.next_attempt_at).is_not(None), col(OutboxRow.attempts) == 0))
            .order_by(col(OutboxRow.created_at), col(OutboxRow.id))
        ).all()
        due: list[int] = []
        waiting: dict[int, dt.datetime] = {}
        for row_id, chat_id, at in heads:
            if chat_id in waiting:
                continue
            when = as_utc(at) if at is not None else now
            if when <= now:
                due.append(row_id)
            else:
                waiting[chat_id] = when
        return due, min(waiting.values(), default=None)

    def undelivered(self) -> int:
        """Messages not delivered yet, including those Telegram refused."""
        with self.ledger.read() as session:
            return int(session.exec(
                select(func.count()).select_from(OutboxRow).where(col(OutboxRow.delivered_at).is_(None))
            ).one())

    def refused(self, limit: int = 10) -> list[OutboxRow]:
        """Parked rows: refused by Telegram (blocked bot, bad request), kept for the owner to see, newest first."""
        query = (
            select(OutboxRow)
            .where(*_PARKED)
            .order_by(col(OutboxRow.created_at).desc(), col(OutboxRow.id).desc())
            .limit(limit)
        )
        with self.ledger.read() as session:
            return list(session.exec(query))

    def refused_count(self) -> int:
        """How many undelivered rows Telegram refused for good."""
        with self.ledger.read() as session:
            return int(session.exec(select(func.count()).select_from(OutboxRow).where(*_PARKED)).one())

    def mark_delivered(self, outbox_id: int, message_id: int | None) -> None:
        """Delivered: record when and as which Telegram message (the last part, the one carrying the buttons)."""
        with self.ledger.write() as session:
            session.execute(
                update(OutboxRow)
                .where(col(OutboxRow.id) == outbox_id, col(OutboxRow.delivered_at).is_(None))
                .values(delivered_at=self.ledger.now(), message_id=message_id, attempts=OutboxRow.attempts + 1)
            )
            session.execute(delete(KeyValue).where(col(KeyValue.key) == _progress_key(outbox_id)))

    def mark_failed(self, outbox_id: int, error: str, retry_at: dt.datetime) -> None:
        """A failed attempt: try again at `retry_at`."""
        self._attempted(outbox_id, error, as_utc(retry_at))

    def mark_refused(self, outbox_id: int, error: str) -> None:
        """Refused for good: park the row (kept and counted as undelivered, never retried on its own)."""
        self._attempted(outbox_id, error, None)

    def _attempted(self, outbox_id: int, error: str, retry_at: dt.datetime | None) -> None:
        with self.ledger.write() as session:
            session.execute(
                update(OutboxRow)
                .where(col(OutboxRow.id) == outbox_id, col(OutboxRow.delivered_at).is_(None))
                .values(attempts=OutboxRow.attempts + 1, last_error=error[:ERROR_CHARS], next_attempt_at=retry_at)
            )

    def parts_sent(self, outbox_id: int) -> int:
        """How many parts of a multi-message row already arrived."""
        value = self.ledger.get_flag(_progress_key(outbox_id))
        return int(value) if value else 0

    def record_parts_sent(self, outbox_id: int, count: int) -> None:
        """Remember that the first `count` parts arrived, so a retry does not send them again."""
        self.ledger.set_flag(_progress_key(outbox_id), str(count))


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
        outbox.subscribe(self.kick)

    async def flush(self) -> int:
        """Deliver everything due, in order; returns how many rows were delivered."""
        async with self._lock:  # one flush at a time, so no row is sent by two tasks
            delivered = 0
            stalled: set[int] = set()
            for row in self.outbox.pending(self.ledger.now()):
                if self._stopping:
                    break
                if row.chat_id in stalled:
                    continue  # keep the chat's order: its older message is backing off
                result = await self._deliver(row)
                if result == "delivered":
                    delivered += 1
                elif result == "later":
                    stalled.add(row.chat_id)
            return delivered

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

    async def _deliver(self, row: OutboxRow) -> Delivery:
        assert row.id is not None
        parts = message_parts(row.text, photo=row.payload is not None)
        message_id: int | None = None
        for index in range(self.outbox.parts_sent(row.id), len(parts)):
            last = index == len(parts) - 1
            try:
                message_id = await self._send_honouring_flood(row, parts[index], buttons=last)
            except (BadRequest, Forbidden, ChatMigrated) as exc:  # Telegram will refuse this message every time
                self.ledger.add_failure("outbox", exc, "recorded", run_id=row.run_id)
                self.outbox.mark_refused(row.id, _describe(exc))
                log.warning("outbox message %s refused by Telegram: %s", row.id, exc)
                return "refused"
            except TelegramError as exc:  # 5xx, network errors, time-outs, persistent flood control
                self._postpone(row, exc)
                return "later"
            if not last:
                self.outbox.record_parts_sent(row.id, index + 1)
        self.outbox.mark_delivered(row.id, message_id)
        return "delivered"

    def _postpone(self, row: OutboxRow, exc: TelegramError) -> None:
        assert row.id is not None
        wait = backoff_seconds(row.attempts + 1, self._retry_base, self._retry_cap)
        if isinstance(exc, RetryAfter):
            wait = max(wait, _seconds(exc))
        retry_at = self.ledger.now() + dt.timedelta(seconds=wait)
        self.ledger.add_failure("outbox", exc, "retried", run_id=row.run_id)
        self.outbox.mark_failed(row.id, _describe(exc), retry_at)
        log.info("outbox message %s not delivered (%s); next attempt in %.1fs", row.id, exc, wait)

    async def _send_honouring_flood(self, row: OutboxRow, part: Part, *, buttons: bool) -> int:
        for _ in range(FLOOD_WAITS):
            try:
                return await self._send(row, part, buttons=buttons)
            except RetryAfter as exc:
                self.ledger.add_failure("outbox", exc, "retried", run_id=row.run_id)
                await self._sleep(_seconds(exc))
        return await self._send(row, part, buttons=buttons)  # a further 429 backs the row off instead

    async def _send(self, row: OutboxRow, part: Part, *, buttons: bool) -> int:
        try:
            return await self._send_once(row, part, row.parse_mode, buttons=buttons)
        except BadRequest as exc:
            if row.parse_mode is None or "parse" not in str(exc).lower():
                raise
            # Markup Telegram cannot parse would be refused forever; the words still matter, so send them plain.
            log.warning("Telegram rejected the markup of outbox message %s; sending plain text", row.id)
            return await self._send_once(row, part, None, buttons=buttons)

    async def _send_once(self, row: OutboxRow, part: Part, parse_mode: str | None, *, buttons: bool) -> int:
        markup = keyboard(row_actions(row)) if buttons else None
        if part.kind == "photo":
            assert row.payload is not None
            message = await self.bot.send_photo(row.chat_id, photo=row.payload, caption=part.text,
                                                parse_mode=parse_mode, reply_markup=markup)
        else:
            message = await self.bot.send_message(row.chat_id, part.text or "", parse_mode=parse_mode,
                                                  reply_markup=markup)
        return message.message_id


def _seconds(exc: RetryAfter) -> float:
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
