"""Jobs whose state lives in the ledger, scheduled as events happen and restored at start-up.

Reminders are one-off jobs at their due time (no polling), re-created from the `reminder` table when Aria starts, so
they fire after a restart too; overdue ones fire at once.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from aria.ledger import Reminder
from aria.outbox import Outbox
from aria.reminders import mark_fired, pending_reminders

if TYPE_CHECKING:
    from aria.app import Aria


def schedule_reminder(aria: Aria, outbox: Outbox, reminder_id: int, due_at: dt.datetime) -> None:
    """A one-off job for a reminder; the fixed job id makes re-scheduling idempotent."""
    aria.scheduler.once(f"reminder:{reminder_id}", due_at, fire_reminder, aria, outbox, reminder_id)


async def fire_reminder(aria: Aria, outbox: Outbox, reminder_id: int) -> str:
    """Deliver a due reminder once: queued under its own key first, so a crash before marking it cannot double it."""
    with aria.ledger.read() as session:
        reminder = session.get(Reminder, reminder_id)
    if reminder is None:
        return f"reminder {reminder_id} was cancelled"
    if reminder.fired_at is not None:
        return f"reminder {reminder_id} already fired"
    # A reminder set in the terminal (chat 0) reaches the owner on Telegram.
    chat_id = reminder.chat_id or (aria.settings.owner_ids[0] if aria.settings.owner_ids else 0)
    outbox.enqueue(chat_id, f"⏰ Reminder: {reminder.text}", purpose="reminder",
                   run_id=reminder.run_id, dedupe_key=f"reminder:{reminder_id}")
    mark_fired(aria.ledger, reminder_id)
    return f"reminder {reminder_id} sent"


def restore_reminders(aria: Aria, outbox: Outbox) -> int:
    """At start-up: a job for every reminder not yet fired; returns how many."""
    pending = pending_reminders(aria.ledger)
    for reminder in pending:
        schedule_reminder(aria, outbox, reminder.id or 0, reminder.due_at)
    return len(pending)


def will_run(aria: Aria, job_id: str) -> bool:
    """False for a job whose reason went away: the expiry of an approval already decided, a reminder cancelled or
    fired. Such a job does nothing when it comes, so "Next jobs" leaves it out."""
    kind, _, raw = job_id.partition(":")
    if not raw.isdigit():
        return True
    if kind == "approval-expiry":
        approval = aria.approvals.get(int(raw))
        return approval is not None and approval.status == "pending"
    if kind == "reminder":
        with aria.ledger.read() as session:
            reminder = session.get(Reminder, int(raw))
        return reminder is not None and reminder.fired_at is None
    return True
