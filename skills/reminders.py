"""Reminders: set, list and cancel messages Aria sends to this chat at a given time."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from aria import reminders
from aria.errors import ToolError, ToolInputError
from aria.skills import ToolContext, tool

KEYWORDS = (
    "remind", "reminder", "reminders", "later", "tomorrow", "tonight", "minutes", "hours", "alarm", "schedule",
    "timer", "cancel",
)
MAX_MINUTES = 525_600  # one year
SHOWN = 50  # reminders listed at most
PREVIEW = 200  # characters of a reminder's text shown in a list


class ReminderSet(BaseModel):
    """A stored reminder."""

    id: int
    due: str  # owner-local time
    in_minutes: int


class ReminderItem(BaseModel):
    """One pending reminder."""

    id: int
    due: str
    text: str


class ReminderList(BaseModel):
    """Pending reminders of this chat, soonest first."""

    reminders: list[ReminderItem]
    more: bool = False  # True when there are more than the ones listed


class ReminderCancelled(BaseModel):
    """A cancelled reminder."""

    id: int
    cancelled: bool


def _local(when: dt.datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def _chat(ctx: ToolContext) -> int:
    if ctx.chat_id is None:
        raise ToolError("reminders need a chat to deliver to; this run has none")
    return ctx.chat_id


def resolve_at(at: str, now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Parse `at` in the owner's zone: a date and time, or a bare time meaning its next occurrence after `now`."""
    text = at.strip()
    try:
        clock = dt.time.fromisoformat(text)
    except ValueError:
        clock = None
    if clock is not None:
        zone = clock.tzinfo or tz
        today = now.astimezone(zone).date()
        due = dt.datetime.combine(today, clock.replace(tzinfo=None), tzinfo=zone)
        if due <= now:
            due = dt.datetime.combine(today + dt.timedelta(days=1), clock.replace(tzinfo=None), tzinfo=zone)
        return due.astimezone(dt.UTC)
    try:
        due = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ToolInputError(f"at: {at!r} is not a time like '2026-11-24 18:30' or '18:30'") from None
    if due.tzinfo is None:
        due = due.replace(tzinfo=tz)
    return due.astimezone(dt.UTC)


@tool(timeout=10.0, keywords=("remind", "reminder", "later", "alarm"))
async def set_reminder(
    ctx: ToolContext,
    text: Annotated[str, Field(min_length=1, max_length=2000)],
    at: str | None = None,
    in_minutes: Annotated[int, Field(ge=1, le=MAX_MINUTES)] | None = None,
) -> ReminderSet:
    """Remind this chat of `text` later. Give exactly one of `at` (owner-local 'YYYY-MM-DD HH:MM', or 'HH:MM' for
    its next occurrence) or `in_minutes`."""
    if (at is None) == (in_minutes is None):
        raise ToolInputError("give exactly one of `at` or `in_minutes`")
    chat_id = _chat(ctx)
    tz = ctx.settings.tz
    now = ctx.clock.now().astimezone(dt.UTC)
    if in_minutes is not None:
        due = now + dt.timedelta(minutes=in_minutes)
    else:
        assert at is not None
        due = resolve_at(at, now, tz)
        if due <= now:
            raise ToolError(f"{_local(due, tz)} is in the past (now is {_local(now, tz)}); pick a later time")
        if due - now > dt.timedelta(minutes=MAX_MINUTES):
            raise ToolInputError("at: reminders can be set at most one year ahead")
    # The write runs in a worker thread; the callback stays on the event loop, where the scheduler lives.
    row = await asyncio.to_thread(reminders.create_reminder, ctx.ledger, chat_id, text, due, ctx.run_id)
    assert row.id is not None
    if ctx.on_reminder is not None:
        ctx.on_reminder(row.id, row.due_at)
    minutes = round((row.due_at - now).total_seconds() / 60)
    return ReminderSet(id=row.id, due=_local(row.due_at, tz), in_minutes=minutes)


@tool(timeout=10.0, keywords=("list", "pending", "upcoming"))
def list_reminders(ctx: ToolContext) -> ReminderList:
    """List this chat's pending reminders, soonest first."""
    rows = reminders.pending_reminders(ctx.ledger, chat_id=_chat(ctx), limit=SHOWN + 1)
    tz = ctx.settings.tz
    items = [ReminderItem(id=r.id, due=_local(r.due_at, tz), text=r.text[:PREVIEW])
             for r in rows[:SHOWN] if r.id is not None]
    return ReminderList(reminders=items, more=len(rows) > SHOWN)


@tool(timeout=10.0, keywords=("cancel", "delete", "remove"))
def cancel_reminder(ctx: ToolContext, reminder_id: int) -> ReminderCancelled:
    """Cancel one of this chat's pending reminders by id."""
    if not reminders.cancel_reminder(ctx.ledger, reminder_id, _chat(ctx)):
        raise ToolError(f"no pending reminder {reminder_id} in this chat (it may have fired or been cancelled)")
    return ReminderCancelled(id=reminder_id, cancelled=True)
