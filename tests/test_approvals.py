"""Escalated actions through the real Application and the fake Bot API: approve, reject, exactly once, expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import callback_data
from aria.clock import ManualClock
from aria.ledger import Approval, Event, Run
from tests.conftest import OWNER, STRANGER, marks, polling

MakeAria = Callable[..., Aria]


@pytest.fixture
def bot_aria(make_aria: MakeAria, fake_telegram: Any, probe_skills: Path) -> Callable[..., Aria]:
    def make(**overrides: Any) -> Aria:
        return make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                         skills_dir=probe_skills, **overrides)
    return make


def _approval(aria: Aria) -> Approval:
    with aria.ledger.read() as s:
        return s.exec(select(Approval)).one()


async def shown(fake_telegram: Any, needle: str, count: int = 1) -> list[Any]:
    """Messages the owner saw containing `needle`, sent or edited in."""
    for _ in range(500):
        found = [c for c in fake_telegram.calls if c.ok and c.method in ("sendMessage", "editMessageText")
                 and needle in str(c.params.get("text"))]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"never shown: {needle!r}; sent: {fake_telegram.sent_texts()}")


async def _ask(fake_telegram: Any, fake_openai: Any, label: str = "deploy") -> Any:
    """The owner asks; the model wants the risky probe; the approval message arrives."""
    fake_openai.enqueue_tool_call("write_mark", {"label": label})
    fake_openai.enqueue_text("PASS")  # the editor's review of the draft
    fake_openai.enqueue_text(f"Done: marked {label}.")
    fake_telegram.add_message("probe and mark it", user_id=OWNER)
    (call,) = await shown(fake_telegram, "Approval needed")
    return call


async def _approval_with_message(aria: Aria) -> Approval:
    """The approval once its message id is recorded (just after the message is sent)."""
    for _ in range(500):
        with aria.ledger.read() as s:
            row = s.exec(select(Approval)).first()
        if row is not None and row.message_id is not None:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError("the approval message id was never recorded")


async def test_approve_runs_once_edits_the_message_and_answers(bot_aria: Callable[..., Aria], fake_telegram: Any,
                                                               fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        request = await _ask(fake_telegram, fake_openai)
        buttons = [b["text"] for row in request.params["reply_markup"]["inline_keyboard"] for b in row]
        assert buttons == ["Approve", "Reject", "Details"]
        assert marks(aria.settings.data_dir) == []  # nothing ran before the press
        approval = await _approval_with_message(aria)
        assert approval.status == "pending" and approval.message_id == request.result["message_id"]
        fake_telegram.press_button(callback_data(approval, "a"), user_id=OWNER, message_id=approval.message_id)
        await shown(fake_telegram, "Done: marked deploy.")
    assert marks(aria.settings.data_dir) == ["deploy"]
    edited = fake_telegram.message(OWNER, approval.message_id)
    assert "Approved by you." in edited["text"] and "reply_markup" not in edited
    assert _approval(aria).status == "executed"
    run = aria.ledger.run(approval.run_id or 0)
    assert run is not None and run.status == "ok"


async def test_reject_tells_the_model_and_runs_nothing(bot_aria: Callable[..., Aria], fake_telegram: Any,
                                                       fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        await _ask(fake_telegram, fake_openai)
        fake_openai.clear_script()
        fake_openai.enqueue_text("Understood, I did not mark anything.")
        approval = await _approval_with_message(aria)
        fake_telegram.press_button(callback_data(approval, "r"), user_id=OWNER, message_id=approval.message_id)
        await shown(fake_telegram, "did not mark")
    assert marks(aria.settings.data_dir) == []
    told = [m for m in fake_openai.last_request.body["messages"] if m["role"] == "tool"][-1]["content"]
    assert "REJECTED by the owner" in told
    assert "tools" not in fake_openai.last_request.body  # no further tool steps after a rejection
    run = aria.ledger.run(approval.run_id or 0)
    assert run is not None and run.status == "rejected"


async def test_double_and_concurrent_presses_run_the_action_once(bot_aria: Callable[..., Aria], fake_telegram: Any,
                                                                 fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        await _ask(fake_telegram, fake_openai)
        approval = await _approval_with_message(aria)
        for _ in range(4):  # arrive together and are handled concurrently
            fake_telegram.press_button(callback_data(approval, "a"), user_id=OWNER, message_id=approval.message_id)
        answers = await fake_telegram.wait_for("answerCallbackQuery", count=4)
        await shown(fake_telegram, "Done: marked deploy.")
    assert marks(aria.settings.data_dir) == ["deploy"]
    texts = sorted(str(a.params.get("text")) for a in answers)
    assert texts.count("Already decided; nothing more was done.") == 3


async def test_press_after_a_restart_runs_once_in_the_new_process(bot_aria: Callable[..., Aria],
                                                                  fake_telegram: Any, fake_openai: Any) -> None:
    first = bot_aria()
    async with polling(first):
        await _ask(fake_telegram, fake_openai)
        approval = await _approval_with_message(first)
    second = bot_aria()  # a new process on the same database
    async with polling(second):
        fake_telegram.press_button(callback_data(approval, "a"), user_id=OWNER, message_id=approval.message_id)
        fake_telegram.press_button(callback_data(approval, "a"), user_id=OWNER, message_id=approval.message_id)
        await shown(fake_telegram, "Done: marked deploy.")
        await fake_telegram.wait_for("answerCallbackQuery", count=2)
    assert marks(second.settings.data_dir) == ["deploy"]


async def test_stranger_and_forged_presses_are_refused_and_recorded(bot_aria: Callable[..., Aria],
                                                                    fake_telegram: Any, fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        await _ask(fake_telegram, fake_openai)
        approval = await _approval_with_message(aria)
        fake_telegram.press_button(callback_data(approval, "a"), user_id=STRANGER)
        forged = f"ap:{approval.id}:a:{'0' * 12}"  # right id, wrong hash
        for data in (forged, "ap:99999:a:0123456789ab", "ap:x:a:zz", "ap:" + "9" * 60):
            fake_telegram.press_button(data, user_id=OWNER)
        answers = await fake_telegram.wait_for("answerCallbackQuery", count=5)
    assert marks(aria.settings.data_dir) == []
    assert _approval(aria).status == "pending"
    texts = [str(a.params.get("text")) for a in answers]
    assert "Not allowed." in texts and "That approval does not exist." in texts
    assert any("does not match" in t for t in texts) and texts.count("That button is not recognised.") == 2
    with aria.ledger.read() as s:
        refused = s.exec(select(Event).where(Event.user_id == STRANGER)).all()
    assert len(refused) == 1


async def test_expiry_with_an_injected_clock_closes_the_run(bot_aria: Callable[..., Aria], fake_telegram: Any,
                                                            fake_openai: Any) -> None:
    clock = ManualClock(dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC))
    aria = bot_aria(clock=clock, approval_ttl_hours=24)
    async with polling(aria):
        await _ask(fake_telegram, fake_openai)
        approval = await _approval_with_message(aria)
        clock.advance(hours=23)
        assert await aria.runs.expire_due() == 0
        clock.advance(hours=2)
        assert await aria.runs.expire_due() == 1
        await shown(fake_telegram, "expired, so nothing was run")
        fake_telegram.press_button(callback_data(approval, "a"), user_id=OWNER, message_id=approval.message_id)
        (answer,) = await fake_telegram.wait_for("answerCallbackQuery")
    assert "Already decided" in answer.params["text"] or "expired" in answer.params["text"]
    assert marks(aria.settings.data_dir) == []
    assert _approval(aria).status == "expired"
    assert "Expired: not run." in fake_telegram.message(OWNER, approval.message_id)["text"]
    run = aria.ledger.run(approval.run_id or 0)
    assert run is not None and (run.status, run.stop_reason) == ("rejected", "expired")


async def test_approvals_command_lists_pending_with_buttons(bot_aria: Callable[..., Aria], fake_telegram: Any,
                                                            fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        await _ask(fake_telegram, fake_openai)
        fake_telegram.add_message("/approvals", user_id=OWNER)
        listed = await shown(fake_telegram, "write_mark", count=2)
    assert "inline_keyboard" in listed[1].params["reply_markup"]


async def test_draft_promising_a_discount_is_blocked_with_the_rule_named(make_aria: MakeAria, fake_openai: Any,
                                                                         probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("write_mark", {"label": "Great news: 50% off for you this week!"})
    fake_openai.enqueue_text("I could not send that.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe and write a mark"))
    assert marks(aria.settings.data_dir) == []
    assert "sent back by rule 'no-discounts'" in outcome.text
    told = [m for m in fake_openai.last_request.body["messages"] if m["role"] == "tool"][-1]["content"]
    assert "REJECTED by the editor, rule 'no-discounts'" in told


async def test_shadow_mode_records_the_action_without_acting(make_aria: MakeAria, fake_openai: Any,
                                                             probe_skills: Path) -> None:
    aria = make_aria(skills_dir=probe_skills)
    assert aria.gate.set_autonomy("probes", "shadow", risky=True) is None
    fake_openai.enqueue_tool_call("write_mark", {"label": "x"})
    fake_openai.enqueue_text("Proposed only.")
    outcome = await aria.agent.run(Request("probe and mark"))
    assert outcome.text == "Proposed only." and marks(aria.settings.data_dir) == []
    (guard,) = [s for s in aria.ledger.steps(outcome.run_id or 0) if s.kind == "guard"]
    assert (guard.name, guard.status) == ("write_mark", "skipped") and "shadow" in (guard.result or "")


def test_risky_tools_cannot_be_set_to_auto_without_the_setting(make_aria: MakeAria, probe_skills: Path) -> None:
    aria = make_aria(skills_dir=probe_skills)
    assert "ARIA_ALLOW_RISKY_AUTO" in (aria.gate.set_autonomy("probes", "auto", risky=True) or "")
    allowed = make_aria(skills_dir=probe_skills, allow_risky_auto=True)
    assert allowed.gate.set_autonomy("probes", "auto", risky=True) is None


async def test_pause_skips_scheduled_actions_and_risky_tools(make_aria: MakeAria, fake_openai: Any,
                                                             probe_skills: Path) -> None:
    aria = make_aria(skills_dir=probe_skills)
    aria.ledger.set_flag("paused", "yes")
    calls: list[str] = []

    async def act() -> None:
        calls.append("acted")

    assert await aria.scheduler.execute("nightly-restart", act, (), True) == "skipped"
    assert calls == []
    with aria.ledger.read() as s:
        job_run = s.exec(select(Run).where(Run.trigger == "schedule")).one()
    assert (job_run.status, job_run.stop_reason) == ("skipped", "paused")
    fake_openai.enqueue_tool_call("write_mark", {"label": "x"})
    fake_openai.enqueue_text("Paused, so nothing ran.")
    outcome = await aria.agent.run(Request("probe and mark"))
    assert marks(aria.settings.data_dir) == [] and outcome.status == "ok"
    aria.ledger.set_flag("paused", "no")
    assert await aria.scheduler.execute("nightly-restart", act, (), True) == "ok" and calls == ["acted"]


async def test_an_interrupted_execution_is_unknown_and_never_rerun(make_aria: MakeAria, probe_skills: Path) -> None:
    aria = make_aria(skills_dir=probe_skills)
    approval = aria.approvals.create(run_id=1, tool="write_mark", skill="probes", arguments={"label": "x"},
                                     risk="risky", summary="mark", chat_id=OWNER, resume_state={})
    with aria.ledger.write() as s:
        row = s.get(Approval, approval.id)
        assert row is not None
        row.status = "executing"
        s.add(row)
    assert aria.approvals.mark_unknown(approval.id or 0)
    assert aria.approvals.claim_execution(approval.id or 0) is False
    marked = aria.approvals.get(approval.id or 0) or approval
    assert marked.status == "unknown" and "may have run" in (marked.result or "")


async def test_concurrent_decisions_have_exactly_one_winner(make_aria: MakeAria) -> None:
    aria = make_aria()
    approval = aria.approvals.create(run_id=1, tool="t", skill="s", arguments={}, risk="risky", summary="s",
                                     chat_id=OWNER, resume_state={})
    from aria.approvals import parse_callback

    press = parse_callback(callback_data(approval, "a"))
    assert press is not None
    results = await asyncio.gather(*(asyncio.to_thread(aria.approvals.decide, press, OWNER) for _ in range(8)))
    assert sorted(results).count("approved") == 1
    claims = await asyncio.gather(*(asyncio.to_thread(aria.approvals.claim_execution, approval.id or 0)
                                    for _ in range(8)))
    assert claims.count(True) == 1
