"""Owner messages are recorded before Telegram is told they arrived, so a crash between the two cannot lose one.

Long polling confirms a batch of updates by asking for the next one (its offset). `WatchedRequest` holds each
getUpdates until the owner guard has recorded every update of the batch before (at most `CONFIRM_WAIT` seconds, so
a stuck handler never stops polling). An owner's text message is recorded as an accepted `telegram-update` event
with its payload (in webhook mode the endpoint records it before it queues it); the run that answers it marks it
processed in the transaction that opens the run, and a command marks it once its replies are written. At start-up,
messages recorded but never processed are handed to the Application again; a copy Telegram delivers again is the
same row, and only one run can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col
from telegram import Message, Update

from aria.errors import LedgerUnavailable
from aria.ledger import Event, Ledger

SOURCE = "telegram-update"
CONFIRM_WAIT = 5.0  # seconds a getUpdates waits for the previous batch to be recorded
_EVENTS: Table = Event.__table__  # type: ignore[attr-defined]
# Built once: every owner message runs them. A delivery id already recorded (unique per source) inserts nothing.
_INSERT = sqlite_insert(_EVENTS).on_conflict_do_nothing().returning(_EVENTS.c.id)
_FIND = select(_EVENTS.c.id, _EVENTS.c.processed_at).where(_EVENTS.c.source == SOURCE,
                                                          _EVENTS.c.delivery_id == bindparam("key"))


class Intake:
    """Tracks fetched updates until they are recorded, and records owner messages durably."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._waiting: set[int] = set()
        self._settled = asyncio.Event()
        self._settled.set()
        self.event_of: dict[int, int] = {}  # update id -> its event row, for the handler that answers it

    def fetched(self, update_ids: Iterable[int]) -> None:
        """A getUpdates batch arrived: its updates must be recorded before the next poll confirms them."""
        self._waiting.update(update_ids)
        if self._waiting:
            self._settled.clear()

    def settled(self, update_id: int) -> None:
        """The guard has dealt with an update (recorded it, or it needs no record)."""
        self._waiting.discard(update_id)
        if not self._waiting:
            self._settled.set()

    async def wait_settled(self, at_most: float = CONFIRM_WAIT) -> None:
        """Until every fetched update is recorded, or `at_most` seconds pass (polling must never stop for long)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), at_most)
        self._waiting.clear()
        self._settled.set()

    def admit(self, update: Update) -> int | None:
        """Record an owner's message (or find the row the webhook endpoint wrote); its event id, or None when it
        was already processed (a redelivery): then nothing more is done with it."""
        key = str(update.update_id)
        user = update.effective_user
        # Insert first: a new message is the common case; a row already there (written by the webhook endpoint, or
        # an earlier delivery) makes the insert a no-op, and is read then. Core statements: this runs before every
        # answer, and the ORM's unit of work would cost more than the insert.
        with self.ledger.write_conn() as conn:
            event_id = conn.execute(_INSERT, {
                "source": SOURCE, "status": "accepted", "verified": True, "delivery_id": key,
                "user_id": user.id if user else None, "received_at": self.ledger.now(),
                "payload": self.ledger.redact(json.dumps(update.to_dict(), ensure_ascii=False))}).scalar()
        found = self._find(key) if event_id is None else (int(event_id), False)
        if found is None or found[1]:
            return None
        self.event_of[update.update_id] = found[0]
        return found[0]

    def processed(self, event_id: int) -> None:
        """A command's replies are written: the message needs nothing more after a restart."""
        with contextlib.suppress(LedgerUnavailable), self.ledger.write_conn() as conn:
            conn.execute(update(Event).where(col(Event.id) == event_id, col(Event.processed_at).is_(None))
                         .values(processed_at=self.ledger.now()))

    def unprocessed(self) -> list[str]:
        """Payloads of owner messages recorded but never answered (the process stopped first), oldest first."""
        with self.ledger.read_conn() as conn:
            rows = conn.execute(select(_EVENTS.c.payload).where(
                _EVENTS.c.source == SOURCE, _EVENTS.c.status == "accepted", _EVENTS.c.processed_at.is_(None),
                _EVENTS.c.payload.is_not(None)).order_by(_EVENTS.c.id)).scalars().all()
        return [row for row in rows if row]

    def _find(self, key: str) -> tuple[int, bool] | None:
        with self.ledger.read_conn() as conn:
            row = conn.execute(_FIND, {"key": key}).first()
        if row is None:
            return None
        return int(row[0]), row[1] is not None


def to_record(update: Update) -> bool:
    """Whether an update is recorded before polling confirms it (or before the webhook answers): a new owner
    message that Aria answers with a run. Edits, button presses and what Aria does not read get fixed replies."""
    return update.message is not None and wants_answer(update.message)


def wants_answer(message: Message) -> bool:
    """Whether a message from the owner is one Aria answers with a run (so it is recorded first): text, a photo
    (its caption; without one, it is answered with what would work), a document or a voice note. A captioned video
    or an animation is not read, and gets a fixed reply."""
    return bool(message.text or message.document or message.voice or message.photo)
