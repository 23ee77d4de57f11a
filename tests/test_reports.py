"""Report queries: spend totals by day/model/skill, failures, runs and traces, read from real ledger rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aria.clock import ManualClock
from aria.ledger import Ledger, Run, Spend, Step
from aria.ledger import reports as r

T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "aria.db", clock=ManualClock(T0))


def add_run(ledger: Ledger, *, started: dt.datetime = T0, status: str = "ok", chat_id: int | None = 1,
            **fields: object) -> int:
    with ledger.write() as s:
        run = Run(trigger="message", channel="telegram", chat_id=chat_id, status=status, started_at=started,
                  **fields)
        s.add(run)
        s.flush()
        assert run.id is not None
        return run.id


def add_spend(ledger: Ledger, run_id: int | None, day: str, *, cost: int = 0, reserved: int = 0,
              status: str = "settled", model: str = "gpt-4o-mini", prompt: int = 0, completion: int = 0) -> None:
    with ledger.write() as s:
        s.add(Spend(run_id=run_id, provider="openai", model=model, status=status, cost_micros=cost,
                    reserved_micros=reserved, prompt_tokens=prompt, completion_tokens=completion, day=day,
                    created_at=T0))


def add_step(ledger: Ledger, run_id: int, seq: int, *, kind: str = "tool", name: str = "x",
             skill: str | None = None, status: str = "ok", **fields: object) -> None:
    with ledger.write() as s:
        s.add(Step(run_id=run_id, seq=seq, kind=kind, name=name, skill=skill, status=status, started_at=T0,
                   **fields))


def test_spend_by_day_counts_settled_cost_and_open_reservations_but_not_released(ledger: Ledger) -> None:
    run = add_run(ledger)
    add_spend(ledger, run, "2026-03-09", cost=1_000, reserved=9_000)
    add_spend(ledger, run, "2026-03-09", status="reserved", cost=0, reserved=2_500)
    add_spend(ledger, run, "2026-03-09", status="released", cost=0, reserved=7_000)
    add_spend(ledger, run, "2026-03-11", cost=40)
    add_spend(ledger, run, "2026-03-12", cost=999_999)  # outside the range

    days = r.spend_by_day(ledger, dt.date(2026, 3, 9), dt.date(2026, 3, 11))

    assert days == [
        r.DaySpend(dt.date(2026, 3, 9), 3_500, 2),
        r.DaySpend(dt.date(2026, 3, 10), 0, 0),
        r.DaySpend(dt.date(2026, 3, 11), 40, 1),
    ]


def test_spend_summary_by_model_is_most_expensive_first_with_token_sums(ledger: Ledger) -> None:
    run = add_run(ledger)
    add_spend(ledger, run, "2026-03-10", cost=100, model="cheap", prompt=10, completion=5)
    add_spend(ledger, run, "2026-03-10", cost=200, model="cheap", prompt=20, completion=7)
    add_spend(ledger, run, "2026-03-10", cost=5_000, model="strong", prompt=300, completion=40)
    add_spend(ledger, run, "2026-03-10", status="released", reserved=10_000, model="unused")

    lines = r.spend_summary(ledger, dt.date(2026, 3, 10), dt.date(2026, 3, 10), "model")

    assert lines == [r.SpendLine("strong", 5_000, 1, 300, 40), r.SpendLine("cheap", 300, 2, 30, 12)]


def test_spend_summary_by_day_is_in_date_order(ledger: Ledger) -> None:
    run = add_run(ledger)
    add_spend(ledger, run, "2026-03-11", cost=1)
    add_spend(ledger, run, "2026-03-09", cost=50)

    lines = r.spend_summary(ledger, dt.date(2026, 3, 1), dt.date(2026, 3, 31), "day")

    assert [(x.key, x.cost_micros) for x in lines] == [("2026-03-09", 50), ("2026-03-11", 1)]


def test_spend_summary_by_skill_splits_a_run_between_its_tool_skills_and_sums_to_the_total(ledger: Ledger) -> None:
    chat_only = add_run(ledger)
    add_step(ledger, chat_only, 1, kind="llm", name="gpt", skill="ignored")
    add_spend(ledger, chat_only, "2026-03-10", cost=1_000, prompt=10, completion=1)

    one_skill = add_run(ledger)
    add_step(ledger, one_skill, 1, name="fetch", skill="web")
    add_step(ledger, one_skill, 2, name="fetch", skill="web")
    add_spend(ledger, one_skill, "2026-03-10", cost=300, prompt=30, completion=3)

    two_skills = add_run(ledger)
    add_step(ledger, two_skills, 1, name="host_health", skill="system")
    add_step(ledger, two_skills, 2, name="fetch", skill="web")
    add_spend(ledger, two_skills, "2026-03-10", cost=7, prompt=5, completion=1)
    add_spend(ledger, two_skills, "2026-03-10", status="reserved", reserved=2)

    lines = {x.key: x for x in r.spend_summary(ledger, dt.date(2026, 3, 10), dt.date(2026, 3, 10), "skill")}

    assert set(lines) == {"chat", "web", "system"}
    assert lines["chat"] == r.SpendLine("chat", 1_000, 1, 10, 1)
    # The two-skill run's 9 micros, 2 calls and 5+1 tokens are split in whole units, one share each.
    web_share = (lines["web"].cost_micros - 300, lines["web"].calls - 1, lines["web"].prompt_tokens - 30,
                 lines["web"].completion_tokens - 3)
    system_share = (lines["system"].cost_micros, lines["system"].calls, lines["system"].prompt_tokens,
                    lines["system"].completion_tokens)
    assert sorted([web_share[0], system_share[0]]) == [4, 5]
    assert web_share[1] == system_share[1] == 1
    assert sorted([web_share[2], system_share[2]]) == [2, 3]
    assert sorted([web_share[3], system_share[3]]) == [0, 1]
    assert sum(x.cost_micros for x in lines.values()) == 1_000 + 300 + 7 + 2


def test_spend_by_skill_rotates_remainders_so_no_skill_is_favoured(ledger: Ledger) -> None:
    for _ in range(10):
        run = add_run(ledger)
        add_step(ledger, run, 1, skill="alpha")
        add_step(ledger, run, 2, skill="beta")
        add_spend(ledger, run, "2026-03-10", cost=1)

    lines = r.spend_summary(ledger, dt.date(2026, 3, 10), dt.date(2026, 3, 10), "skill")

    assert sorted((x.key, x.cost_micros, x.calls) for x in lines) == [("alpha", 5, 5), ("beta", 5, 5)]


def test_local_day_bounds_follow_the_zone_including_a_short_dst_day() -> None:
    start, end = r.local_day_bounds(dt.date(2026, 3, 29), BERLIN)

    assert start == dt.datetime(2026, 3, 28, 23, 0, tzinfo=dt.UTC)
    assert end == dt.datetime(2026, 3, 29, 22, 0, tzinfo=dt.UTC)


def test_runs_by_outcome_uses_owner_local_days(ledger: Ledger) -> None:
    add_run(ledger, started=dt.datetime(2026, 3, 9, 22, 59, tzinfo=dt.UTC), status="failed")  # 9 Mar 23:59 CET
    add_run(ledger, started=dt.datetime(2026, 3, 9, 23, 0, tzinfo=dt.UTC), status="ok")  # 10 Mar 00:00 CET
    add_run(ledger, started=dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC), status="ok")
    add_run(ledger, started=dt.datetime(2026, 3, 10, 22, 30, tzinfo=dt.UTC), status="handoff")
    add_run(ledger, started=dt.datetime(2026, 3, 10, 23, 0, tzinfo=dt.UTC), status="failed")  # 11 Mar CET

    assert r.runs_by_outcome(ledger, dt.date(2026, 3, 10), dt.date(2026, 3, 10), BERLIN) == {"ok": 2, "handoff": 1}


def test_run_trace_has_ordered_steps_failures_and_spend(ledger: Ledger) -> None:
    run = add_run(ledger, request="why is the disk full?", ended_at=T0 + dt.timedelta(seconds=4),
                  status="handoff", stop_reason="tool failed")
    add_step(ledger, run, 2, name="fetch", skill="web", status="error", error_type="ConnectorDown")
    add_step(ledger, run, 1, kind="llm", name="gpt-4o-mini", result="call fetch")
    other = add_run(ledger)
    add_step(ledger, other, 1, name="unrelated")
    ledger.add_failure("tool", RuntimeError("boom"), "handed_off", run_id=run)
    ledger.add_failure("tool", RuntimeError("elsewhere"), "retried", run_id=other)
    add_spend(ledger, run, "2026-03-10", cost=120)
    add_spend(ledger, run, "2026-03-10", status="released", reserved=5_000)

    trace = r.run_trace(ledger, run)

    assert trace is not None
    assert trace.run.id == run and trace.run.status == "handoff" and trace.run.stop_reason == "tool failed"
    assert [(s.seq, s.kind, s.name, s.status) for s in trace.steps] == [
        (1, "llm", "gpt-4o-mini", "ok"), (2, "tool", "fetch", "error"),
    ]
    assert trace.steps[1].error_type == "ConnectorDown"
    assert [(f.error_type, f.message, f.handling) for f in trace.failures] == [("RuntimeError", "boom", "handed_off")]
    assert (trace.spend_micros, trace.spend_calls) == (120, 1)


def test_run_trace_of_an_unknown_run_is_none(ledger: Ledger) -> None:
    assert r.run_trace(ledger, 404) is None


def test_recent_failures_are_newest_first_limited_and_filtered_by_time(ledger: Ledger) -> None:
    clock = ledger.clock
    assert isinstance(clock, ManualClock)
    for n in range(4):
        ledger.add_failure("llm", f"failure {n}", "retried")
        clock.advance(minutes=10)

    assert [f.message for f in r.recent_failures(ledger, limit=2)] == ["failure 3", "failure 2"]
    since = T0 + dt.timedelta(minutes=20)
    assert [f.message for f in r.recent_failures(ledger, since=since)] == ["failure 3", "failure 2"]
    assert r.recent_failures(ledger)[0].created_at == T0 + dt.timedelta(minutes=30)


def test_last_runs_filter_by_chat_finished_and_exclusion(ledger: Ledger) -> None:
    old = add_run(ledger, started=T0, chat_id=1)
    other_chat = add_run(ledger, started=T0 + dt.timedelta(minutes=1), chat_id=2)
    newer = add_run(ledger, started=T0 + dt.timedelta(minutes=2), chat_id=1)
    current = add_run(ledger, started=T0 + dt.timedelta(minutes=3), chat_id=1, status="running")

    assert [x.id for x in r.last_runs(ledger)] == [current, newer, other_chat, old]
    assert [x.id for x in r.last_runs(ledger, 2, chat_id=1)] == [current, newer]
    assert [x.id for x in r.last_runs(ledger, chat_id=1, finished_only=True)] == [newer, old]
    assert [x.id for x in r.last_runs(ledger, chat_id=1, exclude_run_id=newer)] == [current, old]


@pytest.mark.parametrize(("micros", "text"), [
    (0, "$0.00"), (12_300, "$0.0123"), (50, "<$0.0001"), (999_949, "$0.9999"), (1_000_000, "$1.00"),
    (12_345_678, "$12.35"), (1_234_000_000, "$1,234.00"), (-12_300, "-$0.0123"),
])
def test_format_usd(micros: int, text: str) -> None:
    assert r.format_usd(micros) == text
