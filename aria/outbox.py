"""The outbox: every owner-facing message (answers, approval requests and their edits, digests, alerts, reminders,
event outcomes) is a ledger row first, then a send. A crash, a 429 wait, a 5xx or an outage cannot lose one.

    write row (status pending) ──> channel sends it ──> delivered (message id; an approval's message id too)
              ^                          │
              │   5xx, network, 429 ─────┼─ next_attempt_at = now + backoff (≤ 10 min); any Bot API success wakes it
              │                          └─ 400, 403: refused for good (kept, visible as undelivered, not retried)
              └── start-up: rows left pending are sent first, in order

A row is marked delivered as soon as the channel confirms it, so a confirmed message is never sent again. (A time-out
after Telegram received a request is ambiguous; it is retried, because a message lost is worse than one seen twice.)
A row that becomes several messages (a long text, a photo whose text exceeds the caption limit) records each part as
it arrives, so a retry resumes after the last delivered part. Per chat and channel, rows are delivered in the order
they were written: a row waits while an older one to the same chat is backing off.

Rows name the channel that delivers them (`telegram`, `terminal`); a channel only ever takes its own rows.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, delete, func, update
from sqlmodel import Session, col, select

from aria.agent.outcome import Action
from aria.ledger import Approval, KeyValue, Ledger, as_utc
from aria.ledger.models import Outbox as OutboxRow
from aria.ledger.models import OutboxKind

CAPTION_LIMIT = 1024  # Telegram's caption limit
TEXT_LIMIT = 4096  # Telegram's message limit
RETRY_BASE = 5.0  # seconds before the first retry of a failed send
RETRY_CAP = 600.0  # never wait longer than this between attempts
ERROR_CHARS = 500
Purpose = Literal["message", "answer", "approval", "approval-edit", "digest", "alert", "reminder", "event", "notice",
                  "export"]


@dataclass(frozen=True)
class Part:
    """One message of an outbox row: the photo (with its caption) or a text chunk."""

    kind: Literal["photo", "document", "text"]
    text: str | None


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Chunks of at most `limit` characters, cut at paragraph, line or word boundaries where possible."""
    text = text.strip() or "(empty)"
    chunks: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        cut = max(window.rfind("\n\n"), window.rfind("\n"), window.rfind(" "))
        if cut < limit // 2:
            cut = limit
        chunks.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    chunks.append(text)
    return chunks


def message_parts(text: str, *, photo: bool, document: bool = False) -> list[Part]:
    """How a row is sent: text in chunks of at most 4096 characters; a photo (or document) first, captioned with as
    much of the text as fits in 1024 characters, the rest following as text."""
    if not (photo or document):
        return [Part("text", chunk) for chunk in split_text(text)]
    caption, rest = caption_split(text) if text.strip() else ("", "")
    return [Part("document" if document else "photo", caption or None),
            *(Part("text", chunk) for chunk in (split_text(rest) if rest else []))]


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


def _progress_key(outbox_id: int) -> str:
    return f"outbox:{outbox_id}:parts"


_TABLE = OutboxRow.__table__  # type: ignore[attr-defined]
_OLDER = _TABLE.alias("older")
# Built once (every answer runs it): the row, if pending and nothing older to its chat on its channel is pending.
_HEAD_ROW = select(_TABLE).where(
    _TABLE.c.id == bindparam("row_id"), _TABLE.c.status == "pending",
    ~select(_OLDER.c.id).where(_OLDER.c.status == "pending", _OLDER.c.channel == bindparam("channel"),
                               _OLDER.c.chat_id == _TABLE.c.chat_id, _OLDER.c.id < _TABLE.c.id).exists())


class Outbox:
    """The durable queue of owner-facing messages."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every enqueue (a channel's sender subscribes its `kick`)."""
        self._listeners.append(listener)

    def notify(self) -> None:
        """Tell the senders a row was written (after its transaction committed)."""
        for listener in self._listeners:
            listener()

    def values(self, chat_id: int, text: str = "", *, photo: bytes | None = None,
               actions: list[Action] | None = None, parse_mode: str | None = None, purpose: Purpose = "message",
               run_id: int | None = None, dedupe_key: str | None = None, channel: str = "telegram",
               approval_id: int | None = None, edit_message_id: int | None = None,
               kind: OutboxKind | None = None, document: bytes | None = None,
               file_name: str | None = None) -> dict[str, Any]:
        """A new row's column values (for `insert` inside a caller's transaction). A `document` (a file, named
        `file_name`) goes as a Telegram document, its text as the caption."""
        if not text.strip() and photo is None and document is None:
            raise ValueError("an outbox message needs text, a photo or a document")
        if document is not None and (photo is not None or not file_name):
            raise ValueError("a document needs a file name and cannot carry a photo too")
        now = self.ledger.now()
        default_kind: OutboxKind = "document" if document is not None else "photo" if photo is not None else "text"
        return {"chat_id": chat_id, "kind": kind or default_kind, "file_name": file_name,
                "text": self.ledger.redact(text) or "", "payload": photo if document is None else document,
                "reply_markup": _actions_json(actions),
                "dedupe_key": dedupe_key, "created_at": now, "next_attempt_at": now, "attempts": 0,
                "purpose": purpose, "parse_mode": parse_mode, "run_id": run_id, "status": "pending",
                "channel": channel, "approval_id": approval_id, "edit_message_id": edit_message_id}

    def insert(self, conn: Connection, values: dict[str, Any]) -> int | None:
        """Write a row inside the caller's write transaction; None when its dedupe key was already written. Call
        `notify()` once the transaction has committed."""
        key = values.get("dedupe_key")
        if key is not None and conn.execute(
            select(_TABLE.c.id).where(_TABLE.c.dedupe_key == key)
        ).first() is not None:
            return None
        return self.ledger.insert(conn, OutboxRow, values)

    def enqueue(self, chat_id: int, text: str = "", **options: Any) -> int | None:
        """Write a message to deliver; returns its id, or None when `dedupe_key` was already written (send-once)."""
        values = self.values(chat_id, text, **options)
        # The write transaction holds SQLite's write lock from its first statement, so check-then-insert is atomic.
        with self.ledger.write_conn() as conn:
            row_id = self.insert(conn, values)
        self.notify()
        return row_id

    def get(self, outbox_id: int) -> OutboxRow | None:
        """One row by id."""
        with self.ledger.read() as session:
            return session.get(OutboxRow, outbox_id)

    def pending(self, now: dt.datetime, channel: str = "telegram") -> list[OutboxRow]:
        """A channel's rows that are due, oldest first; a chat whose oldest row is backing off waits behind it."""
        with self.ledger.read() as session:
            due, _ = self._plan(session, now, channel)
            if not due:
                return []
            query = select(OutboxRow).where(col(OutboxRow.id).in_(due))
            return list(session.exec(query.order_by(col(OutboxRow.id))))

    def next_due(self, now: dt.datetime, channel: str = "telegram") -> dt.datetime | None:
        """When the next row becomes due (now or earlier when one is due already); None when nothing waits."""
        with self.ledger.read() as session:
            due, wake = self._plan(session, now, channel)
        return now if due else wake

    def head_row(self, outbox_id: int, channel: str) -> OutboxRow | None:
        """The row, when it is still pending and no older row to the same chat waits (so it may go now, in order);
        else None. One Core read, no validation: this runs before every answer."""
        with self.ledger.read_conn() as conn:
            found = conn.execute(_HEAD_ROW, {"row_id": outbox_id, "channel": channel}).mappings().first()
        return OutboxRow.model_construct(**found) if found is not None else None

    def _plan(self, session: Session, now: dt.datetime, channel: str) -> tuple[list[int], dt.datetime | None]:
        # Only ids, chats and times: payloads (PNG charts) stay on disk until a row is actually sent.
        heads = session.exec(
            select(OutboxRow.id, OutboxRow.chat_id, OutboxRow.next_attempt_at)
            .where(col(OutboxRow.status) == "pending", col(OutboxRow.channel) == channel)
            .order_by(col(OutboxRow.id))
        ).all()
        due: list[int] = []
        waiting: dict[int, dt.datetime] = {}
        for row_id, chat_id, at in heads:
            assert row_id is not None  # read back from the table: every row has its id
            if chat_id in waiting:
                continue
            when = as_utc(at) if at is not None else now
            if when <= now:
                due.append(row_id)
            else:
                waiting[chat_id] = when
        return due, min(waiting.values(), default=None)

    def wake_backed_off(self, channel: str = "telegram") -> int:
        """Rows backing off become due now (the channel works again); returns how many."""
        with self.ledger.write_conn() as conn:
            result = conn.execute(update(_TABLE).where(
                _TABLE.c.status == "pending", _TABLE.c.channel == channel, _TABLE.c.attempts > 0,
            ).values(next_attempt_at=self.ledger.now()))
            return int(result.rowcount)

    def undelivered(self) -> int:
        """Messages not delivered yet, including those Telegram refused."""
        with self.ledger.read() as session:
            return int(session.exec(
                select(func.count()).select_from(OutboxRow).where(col(OutboxRow.status) != "delivered")
            ).one())

    def refused(self, limit: int = 10) -> list[OutboxRow]:
        """Rows refused for good (blocked bot, bad request), kept for the owner to see, newest first."""
        query = (
            select(OutboxRow)
            .where(col(OutboxRow.status) == "refused")
            .order_by(col(OutboxRow.created_at).desc(), col(OutboxRow.id).desc())
            .limit(limit)
        )
        with self.ledger.read() as session:
            return list(session.exec(query))

    def refused_count(self) -> int:
        """How many undelivered rows were refused for good."""
        with self.ledger.read() as session:
            return int(session.exec(select(func.count()).select_from(OutboxRow)
                                    .where(col(OutboxRow.status) == "refused")).one())

    def mark_delivered(self, outbox_id: int, message_id: int | None, *, row: OutboxRow | None = None,
                       parts: int = 1) -> None:
        """Delivered: record when and as which message (the last part, the one carrying the buttons); an approval
        request's message id goes on the approval in the same transaction, so its expiry can edit it. With the
        `row` in hand and the number of `parts` it was sent as, the statements it cannot need (part progress of a
        single message sent at the first attempt, no approval) are skipped: this runs on every answer."""
        with self.ledger.write_conn() as conn:
            changed = conn.execute(
                update(_TABLE)
                .where(_TABLE.c.id == outbox_id, _TABLE.c.status == "pending")
                .values(status="delivered", delivered_at=self.ledger.now(), message_id=message_id,
                        attempts=_TABLE.c.attempts + 1)
            ).rowcount
            if row is None or row.attempts > 0 or parts > 1:
                conn.execute(delete(KeyValue).where(col(KeyValue.key) == _progress_key(outbox_id)))
            if changed and message_id is not None and (row is None or row.approval_id is not None):
                approvals = Approval.__table__  # type: ignore[attr-defined]
                approval_of = select(_TABLE.c.approval_id).where(_TABLE.c.id == outbox_id).scalar_subquery()
                conn.execute(update(approvals).where(approvals.c.id == approval_of).values(message_id=message_id))

    def mark_failed(self, outbox_id: int, error: str, retry_at: dt.datetime) -> None:
        """A failed attempt: try again at `retry_at`."""
        self._attempted(outbox_id, error, as_utc(retry_at))

    def mark_refused(self, outbox_id: int, error: str) -> None:
        """Refused for good: the row is kept and counted as undelivered, never retried on its own."""
        self._attempted(outbox_id, error, None)

    def _attempted(self, outbox_id: int, error: str, retry_at: dt.datetime | None) -> None:
        with self.ledger.write_conn() as conn:
            conn.execute(
                update(_TABLE)
                .where(_TABLE.c.id == outbox_id, _TABLE.c.status == "pending")
                .values(attempts=_TABLE.c.attempts + 1, last_error=error[:ERROR_CHARS], next_attempt_at=retry_at,
                        status="pending" if retry_at is not None else "refused")
            )

    def parts_sent(self, row: OutboxRow) -> int:
        """How many parts of a multi-message row already arrived (none before a first attempt)."""
        if row.attempts == 0 or row.id is None:
            return 0
        value = self.ledger.get_flag(_progress_key(row.id))
        return int(value) if value else 0

    def record_parts_sent(self, outbox_id: int, count: int) -> None:
        """Remember that the first `count` parts arrived, so a retry does not send them again."""
        self.ledger.set_flag(_progress_key(outbox_id), str(count))
