"""Budget alerts at 50/80/100 % once per threshold per local day, and spend anomalies naming their runs and skills."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlmodel import select

from aria.alerts import Alerts
from aria.app import Aria
from aria.clock import ManualClock
from aria.ledger import Run, Spend, Step
from aria.ledger.models import Outbox as OutboxRow
from aria.outbox import Outbox
from tests.conftest import OWNER

NOW = dt.datetime(2026, 3, 10, 13, 0, tzinfo=dt.UTC)  # 14:00 in Berlin
MadeAria = Callable[..., Aria]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def make_alerts(make_aria: MadeAria, clock: ManualClock, **settings: object) -> tuple[Aria, Alerts]:
    aria = make_aria(clock=clock, timezone="Europe/Berlin", **settings)
    return aria, Alerts(aria, Outbox(aria.ledger))


def spend(aria: Aria, cost: int, at: dt.datetime | None = None, *, request: str = "hello",
          skills: tuple[str, ...] = ()) -> int:
    """A finished run with one settled call of `cost` micro-dollars at `at` (default: now)."""
    at = at or aria.ledger.now()
    day = at.astimezone(aria.settings.tz).date().isoformat()
    with aria.ledger.write() as s:
        run = Run(trigger="message", channel="telegram", chat_id=OWNER, request=request, status="ok",
                  cost_micros=cost, started_at=at)
        s.add(run)
        s.flush()
        assert run.id is not None
        s.add(Spend(run_id=run.id, provider="openai", model="gpt-4o", status="settled", cost_micros=cost, day=day,
                    created_at=at))
        for seq, skill in enumerate(skills):
            s.add(Step(run_id=run.id, seq=seq, kind="tool", name=f"{skill}_tool", skill=skill, status="ok",
                       started_at=at))
        return run.id


def alert_rows(aria: Aria) -> list[OutboxRow]:
    with aria.ledger.read() as s:
        return list(s.exec(select(OutboxRow).where(OutboxRow.purpose == "alert").order_by(OutboxRow.id)))


def test_budget_alerts_fire_once_per_threshold_per_day(make_aria: MadeAria, clock: ManualClock) -> None:
    aria, alerts = make_alerts(make_aria, clock, day_max_usd=1.0)
    assert alerts.check() == []

    spend(aria, 500_000)
    assert alerts.check() == ["⚠ Budget: 50% of today's $1.00 spent ($0.5000). Mostly: chat $0.5000."]
    assert alerts.check() == []
    spend(aria, 300_000)
    assert [t.split(" of ")[0] for t in alerts.check()] == ["⚠ Budget: 80%"]
    assert alerts.check() == []
    spend(aria, 200_000)
    [used_up] = alerts.check()
    assert used_up.startswith("⛔ Today's budget is used up: $1.00 of $1.00.")
    assert "(Europe/Berlin)" in used_up
    assert alerts.check() == []

    clock.advance(days=1)
    spend(aria, 550_000)
    assert [t.split(" of ")[0] for t in alerts.check()] == ["⚠ Budget: 55%"]
    rows = alert_rows(aria)
    assert len(rows) == 4 and {r.chat_id for r in rows} == {OWNER}
    assert [r.dedupe_key for r in rows] == [f"alert:budget:{day}:{t}:{OWNER}" for day, t in
                                            [("2026-03-10", 50), ("2026-03-10", 80), ("2026-03-10", 100),
                                             ("2026-03-11", 50)]]


def test_a_jump_past_several_thresholds_sends_only_the_highest(make_aria: MadeAria, clock: ManualClock) -> None:
    aria, alerts = make_alerts(make_aria, clock, day_max_usd=1.0)
    spend(aria, 900_000)

    [text] = alerts.check()
    assert text.startswith("⚠ Budget: 90%")
    spend(aria, 1)
    assert alerts.check() == []  # 50 % was passed on the way: not announced late
    assert len(alert_rows(aria)) == 1


def test_budget_day_is_the_owners_local_day(make_aria: MadeAria, clock: ManualClock) -> None:
    aria, alerts = make_alerts(make_aria, clock, day_max_usd=1.0, anomaly_factor=1000)
    spend(aria, 600_000)
    assert len(alerts.check()) == 1
    clock.set(dt.datetime(2026, 3, 10, 22, 30, tzinfo=dt.UTC))  # 23:30 in Berlin: still the 10th
    spend(aria, 100_000)
    assert alerts.check() == []
    clock.set(dt.datetime(2026, 3, 10, 23, 30, tzinfo=dt.UTC))  # 00:30 on the 11th in Berlin: a new day
    spend(aria, 500_000)
    assert [t.split(" of ")[0] for t in alerts.check()] == ["⚠ Budget: 50%"]


def seed_history(aria: Aria) -> None:
    """Seven ordinary days: $0.10 each, spent at 10:00 in Berlin."""
    for days in range(1, 8):
        spend(aria, 100_000, dt.datetime(2026, 3, 10 - days, 9, 0, tzinfo=dt.UTC), request="morning check")


def test_anomaly_alert_names_the_runs_and_skills_behind_it(make_aria: MadeAria, clock: ManualClock) -> None:
    aria, alerts = make_alerts(make_aria, clock, day_max_usd=50.0)
    seed_history(aria)
    big = spend(aria, 700_000, NOW - dt.timedelta(minutes=30), request="crawl every page of the wiki",
                skills=("web", "shell"))
    small = spend(aria, 200_000, NOW - dt.timedelta(minutes=10), request="and summarise it", skills=("web",))

    texts = alerts.check()

    hour, day = texts
    # The hour usually costs nothing, so its baseline is the 7 days' average hour: $0.70 / 168 hours.
    assert hour.startswith("⚠ Spend anomaly: $0.9000 in the last hour, 216.0× the usual $0.0042 for this hour")
    assert day.startswith("⚠ Spend anomaly: $0.9000 today so far, 9.0× the usual $0.1000 a day")
    for text in texts:
        assert f"• run #{big} $0.7000 [shell, web] ok: crawl every page of the wiki" in text
        assert f"• run #{small} $0.2000 [web] ok: and summarise it" in text
        assert "Skills: shell, web" in text
    assert alerts.check() == []  # one alert per window per day
    keys = [r.dedupe_key for r in alert_rows(aria)]
    assert keys == [f"alert:anomaly:2026-03-10:{window}:{OWNER}" for window in ("hour", "day")]


def test_usual_spend_small_amounts_and_no_history_are_not_anomalies(make_aria: MadeAria,
                                                                     clock: ManualClock) -> None:
    aria, alerts = make_alerts(make_aria, clock, day_max_usd=50.0)
    spend(aria, 900_000, NOW - dt.timedelta(minutes=5))
    assert alerts.check() == []  # nothing to compare with yet

    clock.advance(days=8)
    seed_history_at = clock.now()
    for days in range(1, 8):  # the same hour of the clock on each of the last 7 days
        spend(aria, 100_000, seed_history_at - dt.timedelta(days=days, minutes=10))
    spend(aria, 9_000, clock.now() - dt.timedelta(minutes=5))
    assert alerts.check() == []  # under a cent: too small to matter
    spend(aria, 150_000, clock.now() - dt.timedelta(minutes=4))
    assert alerts.check() == []  # about the usual for this hour
