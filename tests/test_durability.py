"""Runs that survive faults: a lost press acknowledgement, a process that died mid-run or mid-action, a full disk,
odd text and odd model replies. Through the real Application and the fake Bot API and model server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import callback_data
from aria.ledger import Approval, Event, Outbox, Run, Spend, Step
from tests.conftest import OWNER, eventually, marks, polling
from tests.test_approvals import _approval_with_message, _ask, bot_aria, shown

MakeAria = Callable[..., Aria]
DEAD_WORKER = "999999999:1.00"  # no process has this pid
__all__ = ["bot_aria"]  # the fixture, shared with the approval tests


def _die(aria: Aria, run_id: int, **values: Any) -> None:
    """Make a run look as a killed process left it: still `running`, its worker gone."""
    with aria.ledger.write_conn() as conn:
        aria.ledger.update_row(conn, Run, run_id, {"status": "running", "worker": DEAD_WORKER, **values})


def _rows(aria: Aria, model: type[Any], *where: Any) -> list[Any]:
    with aria.ledger.read() as s:
        return list(s.exec(select(model).where(*where)))


async def _asked_then_stopped(bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any,
                              status: str | None = None) -> Approval:
    """A first process asks for the risky probe and stops with its approval shown (and, with `status`, recorded as
    decided just before the process died)."""
    first = bot_aria()
    async with polling(first):
        await _ask(fake_telegram, fake_openai)
        approval = await _approval_with_message(first)
    if status is not None:
        with first.ledger.write() as s:
            row = s.get(Approval, approval.id)
            assert row is not None
            row.status, row.decided_by = status, OWNER
            s.add(row)
    return approval


async def test_an_approve_press_whose_answer_fails_still_runs_the_action_once(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        await _ask(fake_telegram, fake_openai)
        approval = await _approval_with_message(aria)
        fake_telegram.fail_next("answerCallbackQuery", status=500, times=3)
        fake_telegram.press_button(callback_data(approval, "a"), user_id=OWNER, message_id=approval.message_id)
        await shown(fake_telegram, "Done: marked deploy.")
    assert marks(aria.settings.data_dir) == ["deploy"]
    assert (aria.approvals.get(approval.id or 0) or approval).status == "executed"


async def test_an_approval_decided_but_never_carried_out_runs_once_at_the_next_start(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    # The press was recorded, then the process died before the action began (e.g. killed in a 429 wait).
    approval = await _asked_then_stopped(bot_aria, fake_telegram, fake_openai, "approved")
    second = bot_aria()
    async with polling(second):
        await shown(fake_telegram, "Done: marked deploy.")
        await eventually(lambda: (second.approvals.get(approval.id or 0) or approval).status == "executed")
    async with polling(bot_aria()):  # a third start finds nothing left to do
        await asyncio.sleep(0.2)
    assert marks(second.settings.data_dir) == ["deploy"]


async def test_an_action_caught_mid_execution_is_reported_as_may_have_run(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    approval = await _asked_then_stopped(bot_aria, fake_telegram, fake_openai, "executing")
    assert approval.id is not None and approval.run_id is not None
    second = bot_aria()
    _die(second, approval.run_id)
    async with polling(second):
        (told,) = await shown(fake_telegram, "may or may not have run")
    assert "recorded as unknown and I did not run it again" in told.params["text"]
    decided = second.approvals.get(approval.id)
    assert decided is not None and decided.status == "unknown" and "may have run" in (decided.result or "")
    run = second.ledger.run(approval.run_id)
    assert run is not None and (run.status, run.stop_reason) == ("interrupted", "unknown_action")
    assert marks(second.settings.data_dir) == []  # not run a second time


async def test_a_request_interrupted_during_its_model_call_is_answered_after_restart(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    first = bot_aria()
    run_id = first.ledger.start_run(Run(trigger="message", channel="telegram", chat_id=OWNER, user_id=OWNER,
                                        request="is the site up?", cap_tokens=60000, cap_micros=100000,
                                        cap_steps=8, cap_seconds=120, started_at=first.ledger.now()))
    with first.ledger.write() as s:  # the call it was making: reserved, never settled
        s.add(Spend(run_id=run_id, provider="openai", model="gpt-4o-mini", status="reserved", reserved_micros=700,
                    day=first.budget.today(), created_at=first.ledger.now()))
    _die(first, run_id)
    fake_openai.enqueue_text("Yes, the site is up.")
    second = bot_aria()
    async with polling(second):
        await shown(fake_telegram, "Yes, the site is up.")
        await eventually(lambda: (second.ledger.run(run_id) or Run()).status == "ok")
    (spend, _) = _rows(second, Spend, Spend.run_id == run_id)
    assert (spend.status, spend.cost_micros, spend.price_known) == ("settled", 700, False)  # counted, same caps
    assert "is the site up?" in str(fake_openai.last_request.body["messages"][-1]["content"])


async def test_an_old_interrupted_request_gets_a_retry_button_not_a_surprise_answer(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    first = bot_aria()
    run_id = first.ledger.start_run(Run(trigger="message", channel="telegram", chat_id=OWNER, user_id=OWNER,
                                        request="rotate the logs", started_at=first.ledger.now()
                                        - dt.timedelta(hours=3)))
    _die(first, run_id)
    second = bot_aria()
    async with polling(second):
        (told,) = await shown(fake_telegram, "I was restarted while working on «rotate the logs»")
        buttons = [b["text"] for row in told.params["reply_markup"]["inline_keyboard"] for b in row]
        assert buttons == ["Retry"]
        fake_openai.enqueue_text("Logs rotated plan: …")
        fake_telegram.press_button(f"retry:again:{run_id}", user_id=OWNER, message_id=told.result["message_id"])
        await shown(fake_telegram, "Logs rotated plan")
    assert fake_openai.completions and (second.ledger.run(run_id) or Run()).status == "interrupted"


async def test_a_reply_is_written_before_it_is_sent_and_survives_a_telegram_outage(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        fake_telegram.fail_next("sendMessage", status=502, times=1)
        fake_openai.enqueue_text("First answer.")
        fake_telegram.add_message("one", user_id=OWNER)
        await fake_telegram.wait_for("sendMessage", count=1)
        (row,) = _rows(aria, Outbox, Outbox.purpose == "answer")
        assert row.status == "pending" and row.text == "First answer."
        # Telegram answers again (a getUpdates round trip is enough): the backed-off row goes out without
        # waiting out its backoff, before the newer answer to the same chat.
        fake_openai.enqueue_text("Second answer.")
        fake_telegram.add_message("two", user_id=OWNER)
        await shown(fake_telegram, "Second answer.")
    texts = [t for t in fake_telegram.sent_texts(OWNER) if t.endswith("answer.")]
    assert texts == ["First answer.", "Second answer."]


async def test_model_replies_with_a_null_message_or_lone_surrogates_leak_nothing(
        make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria()
    null_message = {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    fake_openai.enqueue_raw(200, json.dumps(null_message).encode(), {"content-type": "application/json"})
    split_emoji = {**null_message, "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": "broken \ud83d emoji"}}]}
    # json.dumps escapes the lone surrogate as \ud83d, as a model server that split an emoji would send it.
    fake_openai.enqueue_raw(200, json.dumps(split_emoji).encode(), {"content-type": "application/json"})
    outcome = await aria.agent.run(Request("hello \udc80 there"))
    assert outcome.status == "ok" and "\ufffd" in outcome.text
    assert _rows(aria, Spend, Spend.status == "reserved") == []
    run = aria.ledger.run(outcome.run_id or 0)
    assert run is not None and run.request == "hello \ufffd there"


@pytest.fixture
def read_only() -> Iterator[Callable[[Aria, bool], None]]:
    """Makes every connection of a ledger refuse writes (SQLite's "attempt to write a readonly database")."""
    states: dict[int, bool] = {}

    def set_read_only(aria: Aria, on: bool) -> None:
        key = id(aria.ledger.engine)
        if key not in states:
            @event.listens_for(aria.ledger.engine, "checkout")
            def _mode(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
                dbapi_conn.execute(f"PRAGMA query_only = {'ON' if states.get(key) else 'OFF'}")
        states[key] = on

    yield set_read_only


def test_sqlite_refusals_name_why_the_ledger_cannot_be_written() -> None:
    import sqlite3

    from aria.ledger.recorder import unwritable_reason

    assert unwritable_reason(sqlite3.OperationalError("database or disk is full")) == "the disk is full"
    assert unwritable_reason(sqlite3.OperationalError("attempt to write a readonly database")) == \
        "the database is read-only"
    assert unwritable_reason(sqlite3.OperationalError("no such table: run")) is None  # a bug, not the disk


async def test_an_unwritable_ledger_stops_aria_acting_loudly_and_it_recovers_by_itself(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any,
        read_only: Callable[[Aria, bool], None]) -> None:
    aria = bot_aria()
    aria.runs._probe_every = 0.05
    async with polling(aria):
        read_only(aria, True)
        fake_telegram.add_message("first request", user_id=OWNER)
        (notice,) = await shown(fake_telegram, "I stopped acting")
        assert "read-only" in notice.params["text"] and fake_openai.completions == []
        calls_before = len(fake_openai.completions)
        fake_telegram.add_message("second request", user_id=OWNER)
        await shown(fake_telegram, "You asked: «second request»")
        assert len(fake_openai.completions) == calls_before  # nothing acts while nothing can be recorded
        fake_telegram.add_message("/status", user_id=OWNER)
        await shown(fake_telegram, "Ledger: cannot be written")
        read_only(aria, False)  # writable again
        await shown(fake_telegram, "My ledger can be written again")
        fake_openai.default_text = "Back to normal."
        fake_telegram.add_message("third request", user_id=OWNER)
        await shown(fake_telegram, "Back to normal.")
    assert _rows(aria, Spend, Spend.status == "reserved") == []
    assert all(run.status != "running" for run in _rows(aria, Run))


async def test_huge_callback_ids_and_retry_ids_are_refused_cleanly(bot_aria: Callable[..., Aria],
                                                                  fake_telegram: Any) -> None:
    aria = bot_aria()
    async with polling(aria):
        fake_telegram.press_button("ap:" + "9" * 40 + ":a:0123456789ab", user_id=OWNER)
        fake_telegram.press_button("retry:again:" + "9" * 40, user_id=OWNER)
        answers = await fake_telegram.wait_for("answerCallbackQuery", count=2)
    texts = sorted(str(a.params.get("text")) for a in answers)
    assert texts == ["That button does not refer to anything I can retry.", "That button is not recognised."]
    assert _rows(aria, Step) == []


async def test_the_terminal_answers_every_owner_command(make_aria: MakeAria, probe_skills: Path) -> None:
    import io

    from aria.terminal import chat

    aria = make_aria(skills_dir=probe_skills)
    out = io.StringIO()
    await chat(aria, io.StringIO("/status\n/skills\n/digest\n/cost 3\n/approvals\n/pause\n/resume\n"), out)
    text = out.getvalue()
    for expected in ("Spend today", "write_mark", "No approvals are waiting.", "Paused.", "Resumed.",
                     "Cost · last 3 days"):
        assert expected in text, expected
    assert aria.ledger.get_flag("paused") == "no"


async def test_a_ledger_turning_read_only_mid_run_leaves_no_open_run_or_reservation_once_it_is_back(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any,
        read_only: Callable[[Aria, bool], None]) -> None:
    aria = bot_aria()
    aria.runs._probe_every = 0.05
    async with polling(aria):
        fake_openai.enqueue_hang(1.0)
        fake_openai.default_text = "Chapter one."
        fake_telegram.add_message("write me a novel", user_id=OWNER)
        await fake_openai.wait_for_requests(1)
        read_only(aria, True)  # the run is open and its call reserved: now nothing more can be written
        (notice,) = await shown(fake_telegram, "I stopped acting")
        assert "read-only" in notice.params["text"] and len(fake_openai.completions) == 1
        read_only(aria, False)
        (closed,) = await shown(fake_telegram, "I stopped working on «write me a novel»")
        assert [b["text"] for row in closed.params["reply_markup"]["inline_keyboard"] for b in row] == ["Retry"]
        await shown(fake_telegram, "My ledger can be written again")
    assert _rows(aria, Spend, Spend.status == "reserved") == []
    (run,) = _rows(aria, Run, Run.trigger == "message")
    assert (run.status, run.stop_reason) == ("failed", "ledger_unwritable")


async def test_a_rejection_recorded_just_before_a_crash_still_closes_its_run(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    approval = await _asked_then_stopped(bot_aria, fake_telegram, fake_openai, "rejected")
    fake_openai.clear_script()
    fake_openai.enqueue_text("Understood, nothing was marked.")
    second = bot_aria()
    async with polling(second):
        await shown(fake_telegram, "Understood, nothing was marked.")
    run = second.ledger.run(approval.run_id or 0)
    assert run is not None and run.status == "rejected" and marks(second.settings.data_dir) == []


async def test_a_message_recorded_but_not_yet_answered_is_answered_once_after_a_crash(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    first = bot_aria()
    update = fake_telegram.make_message_update("what changed overnight?", user_id=OWNER)
    # The process recorded the message (so polling confirmed it), then died before the run opened.
    first.ledger.record_event("telegram-update", status="accepted", verified=True,
                              delivery_id=str(update["update_id"]), user_id=OWNER, payload=json.dumps(update))
    fake_telegram.add_raw_update(update)  # and Telegram delivers it again too: the same message, twice
    fake_openai.default_text = "Two deploys and a restart."
    second = bot_aria()
    async with polling(second):
        await shown(fake_telegram, "Two deploys and a restart.")
        await asyncio.sleep(0.3)  # room for a second answer, which must not come
    assert fake_telegram.sent_texts(OWNER).count("Two deploys and a restart.") == 1
    assert len(fake_openai.completions) == 1
    (row,) = _rows(second, Event, Event.source == "telegram-update")
    assert row.processed_at is not None and row.run_id is not None


async def test_an_owners_message_is_recorded_with_its_payload_and_marked_answered_by_its_run(
        bot_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    aria = bot_aria()
    fake_openai.default_text = "Noted."
    async with polling(aria):
        fake_telegram.add_message("remember the milk", user_id=OWNER)
        await shown(fake_telegram, "Noted.")
    (row,) = _rows(aria, Event, Event.source == "telegram-update")
    assert row.payload is not None and "remember the milk" in row.payload and row.processed_at is not None
