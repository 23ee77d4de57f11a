"""The ledger skill: spend, failure and trace reports through the tool specs, in the owner's time zone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from aria.clock import ManualClock
from aria.config import Settings
from aria.errors import ToolError, ToolInputError
from aria.ledger import Ledger, Run, Spend, Step
from aria.skills import ToolContext, ToolSpec, load_skill_file

# 23:30 UTC on 1 Jan is already 2 Jan in Berlin: "today" there is 2026-01-02.
NOW = dt.datetime(2026, 1, 1, 23, 30, tzinfo=dt.UTC)
SKILL = load_skill_file(Path(__file__).parent.parent / "skills" / "ledger.py", "test_skills")
TOOLS: dict[str, ToolSpec] = {t.name: t for t in SKILL.tools}


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    clock = ManualClock(NOW)
    ledger = Ledger.open(tmp_path / "aria.db", clock=clock)
    settings = Settings(_env_file=None, timezone="Europe/Berlin", day_max_usd=2.0)  # type: ignore[call-arg]
    return ToolContext(settings=settings, ledger=ledger, clock=clock, chat_id=42)


async def call(ctx: ToolContext, name: str, **arguments: Any) -> Any:
    spec = TOOLS[name]
    return await spec.call(ctx, spec.validate(arguments))


def add_run(ctx: ToolContext, *, chat_id: int = 42, status: str = "ok", minutes: int = 0, **fields: Any) -> int:
    with ctx.ledger.write() as s:
        run = Run(trigger="message", channel="telegram", chat_id=chat_id, status=status,
                  started_at=NOW + dt.timedelta(minutes=minutes), **fields)
        s.add(run)
        s.flush()
        assert run.id is not None
        return run.id


def add_spend(ctx: ToolContext, run_id: int, day: str, cost: int, *, model: str = "gpt-4o-mini",
              status: str = "settled", reserved: int = 0) -> None:
    with ctx.ledger.write() as s:
        s.add(Spend(run_id=run_id, provider="openai", model=model, status=status, cost_micros=cost,
                    reserved_micros=reserved, prompt_tokens=100, completion_tokens=10, day=day, created_at=NOW))


def test_the_skill_declares_its_tools_and_keywords() -> None:
    assert set(TOOLS) == {"spend_report", "failure_report", "run_trace"}
    assert {"spend", "budget", "failures", "tried", "yesterday"} <= SKILL.keywords
    assert all(t.risk == "safe" for t in TOOLS.values())


async def test_spend_report_today_uses_the_owner_local_day(ctx: ToolContext) -> None:
    run = add_run(ctx)
    add_spend(ctx, run, "2026-01-02", 12_300)
    add_spend(ctx, run, "2026-01-02", 0, status="reserved", reserved=1_700, model="gpt-4o")
    add_spend(ctx, run, "2026-01-02", 0, status="released", reserved=50_000, model="gpt-4o")
    add_spend(ctx, run, "2026-01-01", 900_000)  # yesterday in Berlin, though still today in UTC

    report = await call(ctx, "spend_report")

    assert (report.period, report.first, report.last) == ("today", "2026-01-02", "2026-01-02")
    assert (report.total, report.calls, report.day_cap) == ("$0.0140", 2, "$2.00")
    assert [(x.key, x.cost, x.calls) for x in report.lines] == [("gpt-4o-mini", "$0.0123", 1),
                                                                ("gpt-4o", "$0.0017", 1)]


async def test_spend_report_periods_and_grouping_by_day(ctx: ToolContext) -> None:
    run = add_run(ctx)
    for day, cost in [("2025-12-26", 1), ("2025-12-27", 10), ("2026-01-01", 100), ("2026-01-02", 1_000)]:
        add_spend(ctx, run, day, cost)

    yesterday = await call(ctx, "spend_report", period="yesterday")
    week = await call(ctx, "spend_report", period="last_7_days", by="day")
    month = await call(ctx, "spend_report", period="month_to_date")

    assert (yesterday.first, yesterday.total) == ("2026-01-01", "$0.0001")
    assert (week.first, week.last) == ("2025-12-27", "2026-01-02")
    assert [(x.key, x.cost) for x in week.lines] == [("2025-12-27", "<$0.0001"), ("2026-01-01", "$0.0001"),
                                                     ("2026-01-02", "$0.0010")]
    assert (month.first, month.calls, month.total) == ("2026-01-01", 2, "$0.0011")


async def test_spend_report_by_skill_attributes_runs_to_their_tools(ctx: ToolContext) -> None:
    web_run, chat_run = add_run(ctx), add_run(ctx)
    with ctx.ledger.write() as s:
        s.add(Step(run_id=web_run, seq=1, kind="tool", name="fetch", skill="web", status="ok", started_at=NOW))
    add_spend(ctx, web_run, "2026-01-02", 5_000)
    add_spend(ctx, chat_run, "2026-01-02", 2_000)

    report = await call(ctx, "spend_report", by="skill")

    assert [(x.key, x.cost) for x in report.lines] == [("web", "$0.0050"), ("chat", "$0.0020")]


async def test_spend_report_rejects_an_unknown_period(ctx: ToolContext) -> None:
    with pytest.raises(ToolInputError, match="period"):
        await call(ctx, "spend_report", period="forever")


async def test_failure_report_lists_newest_first_in_local_time(ctx: ToolContext) -> None:
    ctx.ledger.add_failure("llm", TimeoutError("slow model"), "retried")
    assert isinstance(ctx.clock, ManualClock)
    ctx.clock.advance(minutes=5)
    ctx.ledger.add_failure("connector", ConnectionError("github down"), "degraded", run_id=add_run(ctx))

    report = await call(ctx, "failure_report", limit=5)

    assert [(f.component, f.error, f.message, f.handling) for f in report.failures] == [
        ("connector", "ConnectionError", "github down", "degraded"),
        ("llm", "TimeoutError", "slow model", "retried"),
    ]
    assert report.failures[1].when == "2026-01-02 00:30"


async def test_run_trace_defaults_to_the_last_finished_run_of_this_chat(ctx: ToolContext) -> None:
    wanted = add_run(ctx, minutes=1, status="handoff", stop_reason="no progress", request="check the backups",
                     ended_at=NOW + dt.timedelta(minutes=1, seconds=12), final_text="I could not reach the NAS")
    add_run(ctx, minutes=2, chat_id=7)  # another chat
    current = add_run(ctx, minutes=3, status="running")
    for seq, (kind, name, status) in enumerate([("llm", "gpt-4o-mini", "ok"), ("tool", "nas_status", "error")]):
        ctx.ledger.add_step(Step(run_id=wanted, seq=seq, kind=kind, name=name, status=status, started_at=NOW,
                                 latency_ms=30, result="x" * 400))
    ctx.ledger.add_failure("tool", ConnectionError("NAS unreachable"), "handed_off", run_id=wanted)
    add_spend(ctx, wanted, "2026-01-02", 3_000)
    ctx.run_id = current

    trace = await call(ctx, "run_trace")

    assert (trace.run_id, trace.status, trace.stop_reason, trace.seconds) == (wanted, "handoff", "no progress", 12.0)
    assert (trace.request, trace.answer, trace.cost) == ("check the backups", "I could not reach the NAS", "$0.0030")
    assert [(s.kind, s.name, s.status) for s in trace.steps] == [("llm", "gpt-4o-mini", "ok"),
                                                                 ("tool", "nas_status", "error")]
    assert len(trace.steps[0].result) <= 120
    assert [f.message for f in trace.failures] == ["NAS unreachable"]


async def test_run_trace_by_id_and_errors(ctx: ToolContext) -> None:
    run = add_run(ctx, status="ok", ended_at=NOW)

    assert (await call(ctx, "run_trace", run_id=run)).run_id == run
    with pytest.raises(ToolError, match="no run 999"):
        await call(ctx, "run_trace", run_id=999)
    ctx.chat_id = 5
    with pytest.raises(ToolError, match="no earlier finished run"):
        await call(ctx, "run_trace")


async def test_run_trace_keeps_the_start_and_end_of_a_long_run(ctx: ToolContext) -> None:
    run = add_run(ctx, ended_at=NOW)
    with ctx.ledger.write() as s:
        s.add_all(Step(run_id=run, seq=n, kind="tool", name=f"t{n}", status="ok", started_at=NOW) for n in range(50))

    trace = await call(ctx, "run_trace", run_id=run)

    assert trace.steps_omitted == 20
    assert [s.seq for s in trace.steps] == [*range(15), *range(35, 50)]
