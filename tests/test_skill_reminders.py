"""Reminders: the skill writes due times in UTC from owner-local input; delivery claims each reminder once."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from aria import reminders
from aria.clock import ManualClock
from aria.config import Settings
from aria.errors import ToolError, ToolInputError
from aria.ledger import Ledger, Reminder
from aria.skills import ToolContext, ToolSpec, load_skill_file

SKILL = load_skill_file(Path(__file__).parent.parent / "skills" / "reminders.py", "test_skills")
TOOLS: dict[str, ToolSpec] = {t.name: t for t in SKILL.tools}
# 22:10 UTC on 24 Nov is 23:10 in Berlin (CET, UTC+1).
NOW = dt.datetime(2026, 11, 24, 22, 10, tzinfo=dt.UTC)


@pytest.fixture
def scheduled() -> list[tuple[int, dt.datetime]]:
    return []


@pytest.fixture
def ctx(tmp_path: Path, scheduled: list[tuple[int, dt.datetime]]) -> ToolContext:
    clock = ManualClock(NOW)
    settings = Settings(_env_file=None, timezone="Europe/Berlin")  # type: ignore[call-arg]
    return ToolContext(settings=settings, ledger=Ledger.open(tmp_path / "aria.db", clock=clock), clock=clock,
                       chat_id=42, run_id=None, on_reminder=lambda rid, due: scheduled.append((rid, due)))


async def call(ctx: ToolContext, name: str, **arguments: Any) -> Any:
    spec = TOOLS[name]
    return await spec.call(ctx, spec.validate(arguments))


def rows(ctx: ToolContext) -> list[Reminder]:
    with ctx.ledger.read() as s:
        return list(s.exec(select(Reminder).order_by(col(Reminder.id))))


def test_the_skill_declares_its_tools_and_keywords() -> None:
    assert set(TOOLS) == {"set_reminder", "list_reminders", "cancel_reminder"}
    assert {"remind", "reminder", "later", "tomorrow", "minutes"} <= SKILL.keywords


async def test_in_minutes_stores_the_utc_due_time_and_tells_the_scheduler(
        ctx: ToolContext, scheduled: list[tuple[int, dt.datetime]]) -> None:
    result = await call(ctx, "set_reminder", text="take the bread out", in_minutes=5)

    [row] = rows(ctx)
    assert (row.id, row.chat_id, row.text, row.fired_at) == (result.id, 42, "take the bread out", None)
    assert row.due_at == NOW + dt.timedelta(minutes=5)
    assert row.created_at == NOW
    assert scheduled == [(row.id, NOW + dt.timedelta(minutes=5))]
    assert (result.due, result.in_minutes) == ("2026-11-24 23:15 CET", 5)


async def test_a_bare_time_already_past_today_means_tomorrow_in_the_owner_zone(ctx: ToolContext) -> None:
    result = await call(ctx, "set_reminder", text="call mum", at="18:30")

    [row] = rows(ctx)
    assert row.due_at == dt.datetime(2026, 11, 25, 17, 30, tzinfo=dt.UTC)
    assert result.due == "2026-11-25 18:30 CET"


async def test_a_bare_time_after_local_midnight_is_today_although_utc_is_still_yesterday(
        ctx: ToolContext) -> None:
    assert isinstance(ctx.clock, ManualClock)
    ctx.clock.set(dt.datetime(2026, 11, 24, 23, 30, tzinfo=dt.UTC))  # 00:30 on 25 Nov in Berlin

    await call(ctx, "set_reminder", text="bins", at="07:00")

    assert rows(ctx)[0].due_at == dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.UTC)


async def test_a_full_local_date_and_time_is_taken_in_the_owner_zone_across_dst(ctx: ToolContext) -> None:
    await call(ctx, "set_reminder", text="renew the certificate", at="2027-04-01 09:00")  # CEST, UTC+2

    assert rows(ctx)[0].due_at == dt.datetime(2027, 4, 1, 7, 0, tzinfo=dt.UTC)


async def test_a_time_in_the_past_is_refused_and_nothing_is_stored(
        ctx: ToolContext, scheduled: list[tuple[int, dt.datetime]]) -> None:
    with pytest.raises(ToolError, match="in the past"):
        await call(ctx, "set_reminder", text="too late", at="2026-11-24 23:00")
    assert rows(ctx) == [] and scheduled == []


@pytest.mark.parametrize("arguments", [
    {"text": "both", "at": "18:30", "in_minutes": 5},
    {"text": "neither"},
])
async def test_exactly_one_of_at_and_in_minutes_is_required(ctx: ToolContext, arguments: dict[str, Any]) -> None:
    with pytest.raises(ToolInputError, match="exactly one"):
        await call(ctx, "set_reminder", **arguments)
    assert rows(ctx) == []


@pytest.mark.parametrize(("arguments", "problem"), [
    ({"text": "x", "in_minutes": 0}, "in_minutes"),
    ({"text": "x", "in_minutes": 525_601}, "in_minutes"),
    ({"text": "", "in_minutes": 5}, "text"),
    ({"text": "x", "at": "half past six"}, "not a time"),
])
async def test_bad_arguments_are_refused(ctx: ToolContext, arguments: dict[str, Any], problem: str) -> None:
    with pytest.raises(ToolInputError, match=problem):
        await call(ctx, "set_reminder", **arguments)


async def test_a_run_without_a_chat_cannot_set_a_reminder(ctx: ToolContext) -> None:
    ctx.chat_id = None
    with pytest.raises(ToolError, match="chat"):
        await call(ctx, "set_reminder", text="x", in_minutes=1)


async def test_list_shows_this_chats_pending_reminders_soonest_first(ctx: ToolContext) -> None:
    later = await call(ctx, "set_reminder", text="later", in_minutes=60)
    sooner = await call(ctx, "set_reminder", text="sooner", in_minutes=10)
    fired = await call(ctx, "set_reminder", text="fired", in_minutes=1)
    assert reminders.mark_fired(ctx.ledger, fired.id)
    ctx.chat_id = 7
    await call(ctx, "set_reminder", text="other chat", in_minutes=1)
    ctx.chat_id = 42

    listed = await call(ctx, "list_reminders")

    assert [(x.id, x.text) for x in listed.reminders] == [(sooner.id, "sooner"), (later.id, "later")]
    assert listed.reminders[0].due == "2026-11-24 23:20 CET" and listed.more is False


async def test_cancel_deletes_a_pending_reminder_of_this_chat_only(ctx: ToolContext) -> None:
    mine = await call(ctx, "set_reminder", text="mine", in_minutes=10)
    ctx.chat_id = 7
    with pytest.raises(ToolError, match=f"no pending reminder {mine.id}"):
        await call(ctx, "cancel_reminder", reminder_id=mine.id)
    ctx.chat_id = 42

    result = await call(ctx, "cancel_reminder", reminder_id=mine.id)

    assert result.cancelled and rows(ctx) == []
    assert reminders.mark_fired(ctx.ledger, mine.id) is False  # a job still scheduled for it sends nothing


async def test_due_and_pending_reminders_and_mark_fired_wins_once(ctx: ToolContext) -> None:
    first = await call(ctx, "set_reminder", text="first", in_minutes=1)
    second = await call(ctx, "set_reminder", text="second", in_minutes=30)
    assert isinstance(ctx.clock, ManualClock)
    later = ctx.clock.advance(minutes=2)

    assert [r.id for r in reminders.due_reminders(ctx.ledger, later)] == [first.id]
    assert [r.id for r in reminders.pending_reminders(ctx.ledger)] == [first.id, second.id]

    claims = await asyncio.gather(*(asyncio.to_thread(reminders.mark_fired, ctx.ledger, first.id)
                                    for _ in range(5)))

    assert sorted(claims) == [False, False, False, False, True]
    assert rows(ctx)[0].fired_at == later
    assert reminders.due_reminders(ctx.ledger, later) == []
    assert [r.id for r in reminders.pending_reminders(ctx.ledger)] == [second.id]
