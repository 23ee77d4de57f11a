"""The digest: figures that match the ledger rows, phone-sized PNG charts, the daily job at the owner's local time
across DST, and one late digest after downtime."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import struct
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from aria.app import Aria
from aria.clock import ManualClock
from aria.digest import DigestService
from aria.digest.data import load_digest
from aria.digest.service import CATCH_UP_JOB, DAILY_JOB
from aria.ledger import Failure, Ledger, Run, Spend, Step
from aria.ledger.models import Outbox as OutboxRow
from aria.outbox import Outbox
from aria.scheduler import NOOP
from tests.conftest import OWNER, aria_cli

BERLIN = ZoneInfo("Europe/Berlin")
NOW = dt.datetime(2026, 3, 10, 15, 0, tzinfo=dt.UTC)  # 16:00 in Berlin, Tuesday 10 March
DAY = dt.date(2026, 3, 10)
MadeAria = Callable[..., Aria]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def add_run(ledger: Ledger, started: dt.datetime, status: str, request: str, cost: int = 0, *,
            channel: str = "telegram", final_text: str | None = None) -> int:
    with ledger.write() as s:
        run = Run(trigger="message", channel=channel, chat_id=OWNER, request=request, status=status,
                  cost_micros=cost, started_at=started, final_text=final_text)
        s.add(run)
        s.flush()
        assert run.id is not None
        return run.id


def add_tool_steps(ledger: Ledger, run_id: int, *skills: str) -> None:
    with ledger.write() as s:
        s.add(Step(run_id=run_id, seq=0, kind="llm", name="gpt-4o", status="ok", started_at=NOW))
        for seq, skill in enumerate(skills, start=1):
            s.add(Step(run_id=run_id, seq=seq, kind="tool", name=f"{skill}_tool", skill=skill, status="ok",
                       started_at=NOW))


def add_spend(ledger: Ledger, run_id: int, day: str, model: str, cost: int, status: str = "settled") -> None:
    with ledger.write() as s:
        s.add(Spend(run_id=run_id, provider="openai", model=model, status=status,
                    cost_micros=cost if status == "settled" else 0, reserved_micros=cost if status != "settled" else 0,
                    day=day, created_at=NOW))


def add_failure(ledger: Ledger, at: dt.datetime, component: str, error_type: str, message: str) -> None:
    with ledger.write() as s:
        s.add(Failure(component=component, error_type=error_type, message=message, handling="retried",
                      created_at=at))


def seed(ledger: Ledger) -> None:
    """A known day (10 March, Berlin) with spend, runs, skills, failures and a handoff, plus history around it."""
    at = dt.datetime(2026, 3, 10, 9, 0, tzinfo=dt.UTC)
    r1 = add_run(ledger, at, "ok", "check the web server", 300_000)
    add_tool_steps(ledger, r1, "web", "web")
    add_spend(ledger, r1, "2026-03-10", "gpt-4o", 300_000)
    add_spend(ledger, r1, "2026-03-10", "gpt-4o", 999_000, status="released")  # a failed call: costs nothing
    r2 = add_run(ledger, at, "ok", "restart nginx", 160_000)
    add_tool_steps(ledger, r2, "web", "shell")
    add_spend(ledger, r2, "2026-03-10", "gpt-4o-mini", 40_000)
    add_spend(ledger, r2, "2026-03-10", "gpt-4o", 100_000)
    add_spend(ledger, r2, "2026-03-10", "gpt-4o", 20_000, status="reserved")  # in flight: counts its reservation
    r3 = add_run(ledger, at, "failed", "rotate the logs", 10_000)
    add_tool_steps(ledger, r3, "shell")
    add_spend(ledger, r3, "2026-03-10", "gpt-4o-mini", 10_000)
    # 23:30 UTC on the 9th is 00:30 on the 10th in Berlin: the owner's day, not UTC's.
    r4 = add_run(ledger, dt.datetime(2026, 3, 9, 23, 30, tzinfo=dt.UTC), "handoff", "find the invoice", 50_000,
                 final_text="I don't know: the mail API key is missing.\nWhat I tried:\n• mail → 401")
    add_spend(ledger, r4, "2026-03-10", "gpt-4o-mini", 50_000)
    add_run(ledger, at, "ok", "digest:daily", channel="scheduler")
    previous = add_run(ledger, dt.datetime(2026, 3, 9, 12, 0, tzinfo=dt.UTC), "ok", "hello", 250_000)
    add_spend(ledger, previous, "2026-03-09", "gpt-4o-mini", 250_000)
    early = add_run(ledger, dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC), "ok", "plan the week", 1_000_000)
    add_spend(ledger, early, "2026-03-02", "gpt-4o", 1_000_000)
    february = add_run(ledger, dt.datetime(2026, 2, 27, 12, 0, tzinfo=dt.UTC), "degraded", "status", 500_000)
    add_spend(ledger, february, "2026-02-27", "gpt-4o", 500_000)
    add_failure(ledger, at, "llm", "RateLimitError", "429 slow down")
    add_failure(ledger, at, "llm", "RateLimitError", "429 slow down")
    add_failure(ledger, at, "tool", "ToolTimeout", "web.fetch timed out")
    add_failure(ledger, dt.datetime(2026, 3, 9, 12, 0, tzinfo=dt.UTC), "web", "Boom", "another day")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def aria(make_aria: MadeAria, clock: ManualClock) -> Aria:
    return make_aria(clock=clock, timezone="Europe/Berlin", day_max_usd=2.0)


@pytest.fixture
def service(aria: Aria) -> DigestService:
    return DigestService(aria, Outbox(aria.ledger))


def digest_rows(aria: Aria) -> list[OutboxRow]:
    with aria.ledger.read() as s:
        return list(s.exec(select(OutboxRow).where(OutboxRow.purpose == "digest").order_by(OutboxRow.id)))


async def test_empty_database_says_no_activity_and_sends_no_chart(service: DigestService, aria: Aria) -> None:
    digest = await service.compose()

    assert digest.png is None
    assert digest.text.splitlines() == ["Aria digest · Tue 10 Mar (today)", "", "No activity yet."]
    assert await service.send_daily() == 1
    [row] = digest_rows(aria)
    assert row.kind == "text" and row.payload is None and "No activity yet." in row.text


async def test_figures_in_the_text_match_the_rows(service: DigestService, aria: Aria) -> None:
    seed(aria.ledger)

    lines = (await service.compose(DAY)).text.splitlines()

    expected = [
        "Aria digest · Tue 10 Mar (today)",
        "• Today: $0.5200 of $2.00 (26%)",
        "• Yesterday: $0.2500",
        "• Last 7 days: $0.7700",
        "• March to date: $1.77 of $60.00 (3%)",
        "• Forecast March: $4.08 (7% of budget)",  # 1.77 + 0.77 x 21 days left / 7
        "By model: gpt-4o $0.4200, gpt-4o-mini $0.1000",
        "By skill: web $0.3800, shell $0.0900, chat $0.0500",
        "• web: 2 · 100% · $0.1900",
        "• shell: 2 · 50% · $0.0900",
        "• chat: 1 · 0% · none ok",
        "• #1 $0.3000 ok [web]: check the web server",
        "• #2 $0.1600 ok [shell, web]: restart nginx",
        "• #4 $0.0500 handoff: find the invoice",
        "Runs: 4 (ok 2, failed 1, handoff 1)",
        "Scheduled jobs: 1 (ok 1)",
        "Failures: 3",
        "• llm 2: RateLimitError: 429 slow down ×2",
        "• tool 1: ToolTimeout: web.fetch timed out ×1",
        "Handoffs, what I tried and failed at: 1",
        "• #4 find the invoice → I don't know: the mail API key is missing.",
        "Pending approvals: 0",
        "Circuits: all closed",
        "Paused: no",
        "Undelivered messages: 0",
    ]
    assert [line for line in expected if line not in lines] == []
    assert lines.index(expected[1]) < lines.index("Runs: 4 (ok 2, failed 1, handoff 1)")  # money first


def test_chart_series_follow_the_owners_local_days(aria: Aria) -> None:
    seed(aria.ledger)

    data = load_digest(aria.ledger, DAY, BERLIN, day_cap=2_000_000, month_cap=60_000_000)

    assert data.spend_chart.days[0] == dt.date(2026, 2, 25) and data.spend_chart.days[-1] == DAY
    assert data.spend_chart.stacks["gpt-4o"][-1] == 420_000
    assert data.spend_chart.stacks["gpt-4o-mini"][-2:] == [250_000, 100_000]
    assert data.spend_chart.total == 520_000 + 250_000 + 1_000_000 + 500_000
    assert data.runs_chart.stacks["ok"][-2:] == [1, 2]  # the scheduler's own run is not a work run
    assert data.runs_chart.stacks["handoff"][-1] == 1  # started 00:30 Berlin time on the 10th
    assert data.runs_chart.stacks["degraded"][2] == 1  # 27 February


async def test_charts_are_phone_sized_pngs_under_200_kb(service: DigestService, aria: Aria) -> None:
    seed(aria.ledger)

    digest = await service.compose(DAY)
    cost = await service.cost(7)

    assert digest.png is not None and cost.png is not None
    assert png_size(digest.png) == (1080, 1350)
    assert png_size(cost.png) == (1080, 810)
    assert len(digest.png) < 200_000 and len(cost.png) < 200_000


async def test_cost_report_totals_the_period(service: DigestService, aria: Aria) -> None:
    seed(aria.ledger)

    lines = (await service.cost(7)).text.splitlines()

    assert lines[0] == "Cost · last 7 days (Wed 4 Mar – Tue 10 Mar)"
    assert lines[1] == "Total: $0.7700, $0.1100 a day on average (budget $2.00 a day)"
    assert lines[2] == "Today: $0.5200 of $2.00 (26%)"
    assert "By model: gpt-4o $0.4200, gpt-4o-mini $0.3500" in lines


async def test_compose_keeps_the_event_loop_free(service: DigestService, aria: Aria) -> None:
    seed(aria.ledger)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        digest = await service.compose(DAY)
    finally:
        task.cancel()
    assert digest.png is not None
    assert ticks >= 3  # the loop kept running while queries and charts ran in a worker thread


def test_daily_job_fires_at_local_time_across_dst_changes(service: DigestService, aria: Aria) -> None:
    service.schedule(aria.scheduler)
    job = aria.scheduler.aps.get_job(DAILY_JOB)
    assert job is not None and aria.scheduler.aps.get_job(CATCH_UP_JOB) is not None

    def next_fire(local: dt.datetime) -> dt.datetime:
        return job.trigger.get_next_fire_time(None, local).astimezone(dt.UTC)

    # Spring forward on Sunday 29 March 2026: 08:00 is 07:00 UTC the day before, 06:00 UTC on the day.
    assert next_fire(dt.datetime(2026, 3, 27, 9, 0, tzinfo=BERLIN)) == dt.datetime(2026, 3, 28, 7, 0, tzinfo=dt.UTC)
    assert next_fire(dt.datetime(2026, 3, 28, 9, 0, tzinfo=BERLIN)) == dt.datetime(2026, 3, 29, 6, 0, tzinfo=dt.UTC)
    # Fall back on Sunday 25 October 2026: 06:00 UTC the day before, 07:00 UTC on the day.
    assert next_fire(dt.datetime(2026, 10, 23, 9, 0, tzinfo=BERLIN)) == dt.datetime(2026, 10, 24, 6, 0, tzinfo=dt.UTC)
    assert next_fire(dt.datetime(2026, 10, 24, 9, 0, tzinfo=BERLIN)) == dt.datetime(2026, 10, 25, 7, 0, tzinfo=dt.UTC)
    # The slot the job serves follows the same local time.
    assert service.latest_slot(dt.datetime(2026, 3, 29, 5, 59, tzinfo=dt.UTC)) == dt.date(2026, 3, 28)
    assert service.latest_slot(dt.datetime(2026, 3, 29, 6, 0, tzinfo=dt.UTC)) == dt.date(2026, 3, 29)
    assert service.latest_slot(dt.datetime(2026, 10, 25, 6, 59, tzinfo=dt.UTC)) == dt.date(2026, 10, 24)
    assert service.latest_slot(dt.datetime(2026, 10, 25, 7, 0, tzinfo=dt.UTC)) == dt.date(2026, 10, 25)


async def test_missed_digests_after_downtime_are_sent_once_late_saying_how_many(
        service: DigestService, aria: Aria, clock: ManualClock) -> None:
    clock.set(dt.datetime(2026, 3, 2, 7, 0, 5, tzinfo=dt.UTC))  # Monday 08:00:05 in Berlin: on time
    assert await service.send_daily() == 1
    clock.set(dt.datetime(2026, 3, 5, 9, 30, tzinfo=dt.UTC))  # down until Thursday 10:30
    assert await service.catch_up() == 1
    assert await service.catch_up() is NOOP  # recorded as a job that found nothing to do, not counted
    assert await service.send_daily() == 0
    clock.set(dt.datetime(2026, 3, 6, 7, 0, 1, tzinfo=dt.UTC))  # Friday, on time again
    assert await service.send_daily() == 1

    rows = digest_rows(aria)
    assert [r.dedupe_key for r in rows] == [f"digest:2026-03-0{d}:{OWNER}" for d in (2, 5, 6)]
    on_time, late, next_day = (r.text.splitlines() for r in rows)
    assert on_time[0] == "Aria digest · Sun 1 Mar (yesterday)"  # a morning digest reports on the day before
    assert late[0] == ("⚠ Sent late: 3 daily digests were missed while Aria was not running "
                       "(this one was due Thu 5 Mar 08:00).")
    assert late[1] == "Aria digest · Wed 4 Mar (yesterday)"
    assert next_day[0] == "Aria digest · Thu 5 Mar (yesterday)"


async def test_first_start_misses_nothing_and_the_next_slot_is_on_time(
        service: DigestService, aria: Aria, clock: ManualClock) -> None:
    assert await service.catch_up() is NOOP  # 16:00: today's slot passed before Aria existed
    assert await service.send_daily() == 0
    clock.set(dt.datetime(2026, 3, 11, 7, 0, tzinfo=dt.UTC))
    assert await service.send_daily() == 1
    [row] = digest_rows(aria)
    assert not row.text.startswith("⚠")


async def test_a_slightly_late_job_is_not_called_missed(service: DigestService, aria: Aria,
                                                        clock: ManualClock) -> None:
    clock.set(dt.datetime(2026, 3, 9, 7, 0, tzinfo=dt.UTC))
    await service.send_daily()
    clock.set(dt.datetime(2026, 3, 10, 7, 20, tzinfo=dt.UTC))  # 20 minutes late: within the misfire grace
    assert await service.send_daily() == 1
    assert not digest_rows(aria)[-1].text.startswith("⚠")


async def test_digest_with_activity_is_queued_as_one_photo_per_owner(
        make_aria: MadeAria, clock: ManualClock) -> None:
    aria = make_aria(clock=clock, timezone="Europe/Berlin", owner_ids=[OWNER, OWNER + 1])
    seed(aria.ledger)
    service = DigestService(aria, Outbox(aria.ledger))
    clock.set(dt.datetime(2026, 3, 11, 7, 0, tzinfo=dt.UTC))

    assert await service.send_daily() == 2

    rows = digest_rows(aria)
    assert [r.chat_id for r in rows] == [OWNER, OWNER + 1]
    assert all(r.kind == "photo" and r.payload is not None and png_size(r.payload) == (1080, 1350) for r in rows)
    assert rows[0].text == rows[1].text
    assert rows[0].text.splitlines()[:5] == ["Aria digest · Tue 10 Mar (yesterday)", "", "Spend",
                                             "• Yesterday: $0.5200 of $2.00 (26%)", "• Mon 9 Mar: $0.2500"]


def test_render_to_file_writes_the_chart_and_returns_the_text(service: DigestService, aria: Aria,
                                                               tmp_path: Path) -> None:
    seed(aria.ledger)
    out = tmp_path / "charts" / "digest.png"

    text = service.render_to_file(DAY, out).text

    assert png_size(out.read_bytes()) == (1080, 1350)
    assert text.startswith("Aria digest · Tue 10 Mar (today)")
    assert "• Today: $0.5200 of $2.00 (26%)" in text
    empty = tmp_path / "empty.png"
    nothing = service.render_to_file(dt.date(2025, 1, 1), empty)
    assert nothing.text.endswith("No activity yet.") and nothing.png is None
    assert not empty.exists()


def test_cli_digest_says_whether_it_wrote_a_chart(tmp_path: Path) -> None:
    env = {"TELEGRAM_BOT_TOKEN": "123:abc", "ARIA_OWNER_IDS": "1", "ARIA_DATA_DIR": str(tmp_path)}
    out = tmp_path / "digest.png"
    result = aria_cli(["digest", "--out", str(out), "--day", "2025-01-01"], env, tmp_path)
    assert result.returncode == 0 and "No activity yet." in result.stdout
    assert "No chart written: nothing to chart on 2025-01-01." in result.stderr and not out.exists()


def test_status_lines_show_paused_state_and_undelivered_messages(service: DigestService, aria: Aria) -> None:
    aria.ledger.set_flag("paused", "yes")
    service.outbox.enqueue(OWNER, "waiting")

    lines = service.status_lines()

    assert "Paused: yes (/resume to lift)" in lines
    assert "Undelivered messages: 1" in lines
    assert "Next jobs: none" in lines


async def test_status_shows_the_next_jobs_in_local_time(service: DigestService, aria: Aria) -> None:
    service.schedule(aria.scheduler)
    aria.scheduler.cancel(CATCH_UP_JOB)  # APScheduler runs on the wall clock: keep only the daily job
    aria.scheduler.start()  # jobs get their next run time once the scheduler runs
    try:
        line = next(line for line in service.status_lines() if line.startswith("Next jobs:"))
    finally:
        aria.scheduler.shutdown()
    assert re.fullmatch(r"Next jobs: digest:daily (Mon|Tue|Wed|Thu|Fri|Sat|Sun) 08:00", line), line
