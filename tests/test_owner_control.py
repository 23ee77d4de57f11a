"""Owner control below the chat: overrides that hold across a restart, alerts that fire on reservations and
refusals, honest end messages and buttons, no-op jobs left uncounted, next jobs that will run, charts scaled to
small spend, safe CSV cells and owner set-up errors in `doctor`."""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from aria import commands
from aria.agent.state import Request
from aria.app import Aria
from aria.clock import ManualClock
from aria.digest.charts import PALETTE, spend_chart
from aria.digest.data import Series
from aria.doctor import owners
from aria.evals.stage import EvalChannel
from aria.export import _cell
from aria.ledger import Event, Outbox, Run, SettingChange, Spend
from aria.ledger.reports import runs_by_outcome
from aria.scheduler import NOOP
from aria.views import status_text
from tests.conftest import OWNER, STRANGER, eventually, polling

MakeAria = Callable[..., Aria]


def _alerts(aria: Aria) -> list[str]:
    with aria.ledger.read() as s:
        return [row.text for row in s.exec(select(Outbox).where(Outbox.purpose == "alert").order_by(Outbox.id))]


async def _answer(aria: Aria, line: str) -> commands.Reply:
    name, *args = line.lstrip("/").split()
    (reply,) = await commands.answer(aria, name, args, chat_id=OWNER, user_id=OWNER)
    return reply


async def test_budget_overrides_hold_across_a_restart_and_default_restores_the_setting(
        make_aria: MakeAria, clock: ManualClock) -> None:
    aria = make_aria(clock=clock, day_max_usd=2.0)
    proposal = await _answer(aria, "/budget day 0.5")
    assert aria.budget.day_cap == 2_000_000  # proposed, not applied
    change_id = proposal.actions[0].data.split(":")[1]
    done = await _answer(aria, f"/budget confirm {change_id}")
    assert done.text.startswith("Done: daily cap set to $0.5000")
    assert (await _answer(aria, f"/budget confirm {change_id}")).text.startswith("Already applied")
    restarted = make_aria(clock=clock, day_max_usd=2.0)
    assert restarted.budget.day_cap == 500_000
    back = await _answer(restarted, "/budget day default")
    await _answer(restarted, f"/budget confirm {back.actions[0].data.split(':')[1]}")
    assert restarted.budget.day_cap == 2_000_000
    cancelled = await _answer(restarted, "/budget request 5")
    assert (await _answer(restarted, f"/budget cancel {cancelled.actions[0].data.split(':')[1]}")).text == \
        "Cancelled; nothing changed."
    raise_today = await _answer(restarted, "/budget today +1")
    clock.advance(days=1)
    late = await _answer(restarted, f"/budget confirm {raise_today.actions[0].data.split(':')[1]}")
    assert late.text.endswith("which is over; nothing changed.") and restarted.budget.day_cap == 2_000_000
    with restarted.ledger.read() as s:
        statuses = [c.status for c in s.exec(select(SettingChange).order_by(SettingChange.id))]
    assert statuses == ["applied", "applied", "cancelled", "cancelled"]


@pytest.mark.parametrize("line", ["/budget day -1", "/budget day abc", "/budget day nan", "/budget today 1",
                                  "/budget day 1e9", "/budget week 1", "/budget confirm 99"])
async def test_bad_budget_input_changes_nothing(make_aria: MakeAria, line: str) -> None:
    aria = make_aria()
    reply = await _answer(aria, line)
    assert reply.actions == [] and ("Usage" in reply.text or "not an amount" in reply.text
                                    or "does not exist" in reply.text)
    with aria.ledger.read() as s:
        assert s.exec(select(SettingChange)).all() == []


async def test_the_100_alert_fires_when_the_day_cap_refuses_below_100_percent(make_aria: MakeAria,
                                                                               fake_openai: Any) -> None:
    aria = make_aria(day_max_usd=0.0005)
    fake_openai.enqueue_text("fine", usage={"prompt_tokens": 2000, "completion_tokens": 10})  # about $0.0003
    await aria.runs.handle(Request("hello", chat_id=OWNER), EvalChannel(aria))
    assert aria.budget.day_spent() < aria.budget.day_cap  # under the cap, but no room for another call
    refused = await aria.agent.run(Request("hello again " * 30, chat_id=OWNER))
    assert refused.status == "budget_exhausted" and "today's budget" in refused.text
    aria.alerts.check()
    (alert,) = [text for text in _alerts(aria) if "used up" in text]
    assert "too little left for another call" in alert
    aria.alerts.check()
    assert len([t for t in _alerts(aria) if "used up" in t]) == 1  # once a day


async def test_the_80_alert_fires_when_a_reservation_crosses_the_share(make_aria: MakeAria,
                                                                        fake_openai: Any) -> None:
    aria = make_aria(day_max_usd=0.001)
    fake_openai.enqueue_text("short", usage={"prompt_tokens": 10, "completion_tokens": 2})  # settles tiny
    await aria.agent.run(Request("hello", chat_id=OWNER))  # its reservation took the day past 80 %
    assert aria.budget.day_spent() * 100 < aria.budget.day_cap * 50
    aria.alerts.check()
    assert any(text.startswith("⚠ Budget:") for text in _alerts(aria))


async def test_a_step_cap_is_not_budget_exhausted_and_names_model_calls(make_aria: MakeAria, fake_openai: Any,
                                                                        probe_skills: Path) -> None:
    for n in range(3):
        fake_openai.enqueue_tool_call("probe", {"n": n})
    fake_openai.enqueue_text("Partial.")
    aria = make_aria(skills_dir=probe_skills, run_max_steps=3)
    outcome = await aria.agent.run(Request("probe three times"))
    assert (outcome.status, outcome.stop_reason) == ("handoff", "steps")
    assert "it needed more than 3 model calls" in outcome.text
    assert "4 model calls of 3" in outcome.text  # the wrap-up call counted, no ledger-row count shown
    assert [a.label for a in outcome.actions] == ["Allow more steps once"]
    run = aria.ledger.run(outcome.run_id or 0)
    assert run is not None and (run.status, run.stop_reason, run.route) == ("handoff", "steps", "cheap")


async def test_route_is_recorded_and_escalation_updates_it(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("handoff", {"reason": "unsure"}, model="gpt-4o-mini")
    fake_openai.enqueue_text("Strong answer.", model="gpt-4o")
    aria = make_aria()
    cheap = await aria.agent.run(Request("hello"))
    plan = await aria.agent.run(Request("plan the migration"))
    routes = [(aria.ledger.run(o.run_id or 0) or Run(trigger="", channel="", started_at=dt.datetime.now())).route
              for o in (cheap, plan)]
    assert routes == ["strong", "strong"]  # the first escalated after the cheap model handed off


async def test_no_strong_button_when_strong_is_cheap_or_its_circuit_is_open(make_aria: MakeAria,
                                                                            fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("handoff", {"reason": "unsure"})
    same = make_aria(model_strong="gpt-4o-mini")
    assert (await same.agent.run(Request("hello"))).actions == []
    aria = make_aria()
    assert aria.caller is not None
    breaker = aria.board.get(aria.caller.breaker_key("gpt-4o"))
    for _ in range(5):
        breaker.record_failure("down", retry_after=600)
    fake_openai.enqueue_tool_call("handoff", {"reason": "unsure"})
    fake_openai.enqueue_tool_call("handoff", {"reason": "still unsure"})  # the strong model's circuit is open
    outcome = await aria.agent.run(Request("hello"))
    assert outcome.stop_reason == "handoff" and outcome.actions == []


async def test_a_catch_up_that_found_nothing_is_not_counted(make_aria: MakeAria) -> None:
    aria = make_aria()
    assert await aria.scheduler.execute("digest:catch-up", aria.digests.catch_up, (), False) == "skipped"
    with aria.ledger.read() as s:
        (run,) = s.exec(select(Run)).all()
    assert (run.status, run.stop_reason) == ("skipped", "nothing_due")
    today = aria.digests.today()
    assert runs_by_outcome(aria.ledger, today, today, aria.settings.tz) == {}
    assert "Scheduled jobs run today: 0" in status_text(aria)
    assert await aria.digests.catch_up() is NOOP


async def test_next_jobs_leave_out_decided_approvals_and_cancelled_reminders(make_aria: MakeAria,
                                                                             clock: ManualClock) -> None:
    aria = make_aria(clock=clock)
    approval = aria.approvals.create(run_id=None, tool="write_mark", skill="probes", arguments={"label": "x"},
                                     risk="risky", summary="mark x", chat_id=OWNER, resume_state={})
    aria.runs.schedule_expiry(approval)
    aria.scheduler.once("reminder:77", clock.now() + dt.timedelta(hours=2), _nothing)  # no such reminder
    aria.scheduler.start()
    try:
        line = next(x for x in aria.digests.status_lines() if x.startswith("Next jobs"))
        assert f"approval-expiry:{approval.id}" in line and "reminder:77" not in line
        assert aria.approvals.expire(approval.id or 0)
        line = next(x for x in aria.digests.status_lines() if x.startswith("Next jobs"))
    finally:
        aria.scheduler.shutdown()
    assert line == "Next jobs: none"


async def _nothing() -> None:
    return None


def test_charts_at_a_cent_a_day_show_bars_and_label_every_day() -> None:
    from matplotlib.image import imread

    last = dt.date(2026, 3, 1)
    days = tuple(last - dt.timedelta(days=29 - i) for i in range(30))
    png = spend_chart(Series(days, {"gpt-4o-mini": [10_000] * 30}), 2_000_000)  # $0.01 a day, $2 budget
    pixels = imread(io.BytesIO(png))[:, :, :3]
    red, green, blue = (int(PALETTE[0][i:i + 2], 16) / 255 for i in (1, 3, 5))
    bar = (abs(pixels[:, :, 0] - red) < 0.02) & (abs(pixels[:, :, 1] - green) < 0.02) & \
        (abs(pixels[:, :, 2] - blue) < 0.02)
    assert bar.mean() > 0.2  # bars fill a fifth of the picture, not a hairline
    rows_with_bars = bar.any(axis=1).sum()
    assert rows_with_bars > pixels.shape[0] * 0.4  # tall bars: the y axis fits the spend


def test_day_labels_cover_every_day_of_a_month_and_today() -> None:
    from aria.digest.charts import _day_labels

    last = dt.date(2026, 3, 1)
    month = tuple(last - dt.timedelta(days=30 - i) for i in range(31))
    positions, labels, _ = _day_labels(month)
    assert positions == list(range(31)) and labels[-1] == "1\nMar"
    quarter = tuple(last - dt.timedelta(days=89 - i) for i in range(90))
    positions, _, _ = _day_labels(quarter)
    assert positions[-1] == 89 and len(positions) <= 31


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted() -> None:
    assert [_cell(v) for v in ("=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "plain", 3, None)] == [
        "'=HYPERLINK(\"x\")", "'+1", "'-2", "'@SUM(A1)", "plain", 3, ""]


async def test_export_covers_the_days_asked_for(make_aria: MakeAria, clock: ManualClock) -> None:
    aria = make_aria(clock=clock)
    with aria.ledger.write() as s:
        for days_ago in (0, 3, 10):
            at = clock.now() - dt.timedelta(days=days_ago)
            run = Run(trigger="message", channel="telegram", request=f"{days_ago} days ago", status="ok",
                      started_at=at, cost_micros=1000)
            s.add(run)
            s.flush()
            s.add(Spend(run_id=run.id, provider="openai", model="gpt-4o-mini", status="settled", cost_micros=1000,
                        day=at.date().isoformat(), created_at=at))
    replies = await commands.answer(aria, "export", ["7"], chat_id=OWNER, user_id=OWNER)
    assert [r.file_name for r in replies] == [f"aria-{k}-2026-02-23_2026-03-01.csv"
                                              for k in ("runs", "spend", "failures")]
    runs_csv, spend_csv, _ = (r.document or b"" for r in replies)
    assert runs_csv.decode("utf-8-sig").count("days ago") == 2 and "10 days ago" not in runs_csv.decode()
    assert "2 rows, $0.0020" in replies[1].text and len(spend_csv.decode("utf-8-sig").splitlines()) == 3
    assert (await commands.answer(aria, "export", ["0"]))[0].text.startswith("Usage")


async def test_doctor_fails_without_owners_and_names_refused_users(make_aria: MakeAria) -> None:
    assert owners(make_aria(owner_ids=[])).verdict == "fail"
    aria = make_aria()
    assert owners(aria).verdict == "ok"
    aria.ledger.record_event("telegram", status="refused", verified=False, delivery_id="update:1",
                             reason="message from a non-owner", user_id=123456789)
    check = owners(aria)
    assert check.verdict == "warn" and "123456789 (1 update" in check.detail


async def test_a_strangers_private_message_is_logged_once_a_day_with_its_id(
        make_aria: MakeAria, fake_telegram: Any, caplog: pytest.LogCaptureFixture) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    caplog.set_level(logging.WARNING, logger="aria.owners")
    async with polling(aria):
        for text in ("hi", "hello?", "anyone?"):
            fake_telegram.add_message(text, user_id=STRANGER)
        fake_telegram.add_message("/help", user_id=OWNER)
        await fake_telegram.wait_for("sendMessage")
        await eventually(lambda: _refused(aria) == 3)
    warnings = [r.getMessage() for r in caplog.records if r.name == "aria.owners"]
    assert len(warnings) == 1 and f"user {STRANGER}" in warnings[0] and "ARIA_OWNER_IDS" in warnings[0]


def _refused(aria: Aria) -> int:
    with aria.ledger.read() as s:
        return len(s.exec(select(Event).where(Event.user_id == STRANGER)).all())
