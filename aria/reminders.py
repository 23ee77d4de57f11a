"""Reminders in the ledger: creating, listing, cancelling, and the delivery side's fire-once claim.

The scheduler adds one job per reminder (when it is set, and for every pending one at start-up, so a reminder
due during a restart still fires). A job calls `mark_fired` before sending: the compare-and-set lets exactly one
caller win, so two jobs racing, or a job racing a cancel, deliver a reminder at most once.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, update
from sqlmodel import col, select

from aria.ledger import Ledger, Reminder


def create_reminder(ledger: Ledger, chat_id: int, text: str, due_at: dt.datetime,
                    run_id: int | None = None) -> Reminder:
    """Store a reminder due at `due_at` (any aware time; stored as UTC)."""
    row = Reminder(chat_id=chat_id, text=text, due_at=due_at.astimezone(dt.UTC), created_at=ledger.now(),
                   run_id=run_id)
    with ledger.write() as session:
        session.add(row)
        session.flush()
        session.refresh(row)
    return row


def pending_reminders(ledger: Ledger, chat_id: int | None = None, limit: int | None = None) -> list[Reminder]:
    """Reminders not yet fired, soonest first; optionally of one chat (used to reschedule at start-up)."""
    query = select(Reminder).where(col(Reminder.fired_at).is_(None)).order_by(col(Reminder.due_at),
                                                                            col(Reminder.id))
    if chat_id is not None:
        query = query.where(col(Reminder.chat_id) == chat_id)
    if limit is not None:
        query = query.limit(limit)
    with ledger.read() as session:
        return list(session.exec(query))


def due_reminders(ledger: Ledger, now: dt.datetime) -> list[Reminder]:
    """Reminders due at or before `now` that have not fired, oldest first."""
    query = (
        select(Reminder)
        .where(col(Reminder.fired_at).is_(None), col(Reminder.due_at) <= now)
        .order_by(col(Reminder.due_at), col(Reminder.id))
    )
    with ledger.read() as session:
        return list(session.exec(query))


def mark_fired(ledger: Ledger, reminder_id: int) -> bool:
    """Claim a reminder for delivery: True only for the one caller that set `fired_at`."""
    with ledger.write() as session:
        result = session.execute(
            update(Reminder)
            .where(col(Reminder.id) == reminder_id, col(Reminder.fired_at).is_(None))
            .values(fired_at=ledger.now())
        )
        return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]


def cancel_reminder(ledger: Ledger, reminder_id: int, chat_id: int) -> bool:
    """Delete a chat's pending reminder; False if it does not exist, is another chat's, or already fired.

    Deleting (rather than flagging) makes a job that is still scheduled for it lose `mark_fired` and send nothing.
    """
    with ledger.write() as session:
        result = session.execute(
            delete(Reminder).where(
                col(Reminder.id) == reminder_id,
                col(Reminder.chat_id) == chat_id,
                col(Reminder.fired_at).is_(None),
            )
        )
        return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]
