"""The owner in control from Telegram, end to end through the fake Bot API and the fake model: /new, /budget with its
Confirm button, a day-capped refusal with its alert and its "raise today's cap" button, /trace, /export, /model."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from sqlmodel import select

from aria.app import Aria
from aria.ledger import Run, SettingChange
from aria.ledger.reports import format_usd
from tests.conftest import OWNER, eventually, polling

MakeAria = Callable[..., Aria]


def _telegram(make_aria: MakeAria, fake_telegram: Any, **settings: Any) -> Aria:
    return make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url, **settings)


def _texts(fake_telegram: Any) -> list[str]:
    return [str(c.params.get("text")) for c in fake_telegram.calls
            if c.ok and c.method in ("sendMessage", "editMessageText")]


def _buttons(call: Any) -> dict[str, str]:
    rows = (call.params.get("reply_markup") or {}).get("inline_keyboard", [])
    return {button["text"]: button["callback_data"] for row in rows for button in row}


async def _say(fake_telegram: Any, text: str, until: Callable[[Any], bool]) -> Any:
    fake_telegram.add_message(text, user_id=OWNER)
    (call,) = await fake_telegram.wait_for("sendMessage", predicate=until)
    return call


def _user_contents(request: Any) -> list[str]:
    return [str(m.get("content")) for m in request.body["messages"] if m["role"] in ("user", "assistant")]


async def test_new_conversation_sends_nothing_said_before_it(make_aria: MakeAria, fake_telegram: Any,
                                                             fake_openai: Any) -> None:
    aria = _telegram(make_aria, fake_telegram)
    async with polling(aria):
        fake_openai.enqueue_text("Noted: the password is on the blue card.")
        await _say(fake_telegram, "remember the blue card", lambda c: "blue card" in str(c.params.get("text")))
        fake_openai.enqueue_text("You said the blue card.")
        await _say(fake_telegram, "what did I say?", lambda c: "You said" in str(c.params.get("text")))
        assert "remember the blue card" in _user_contents(fake_openai.completions[-1])  # history works

        reply = await _say(fake_telegram, "/new", lambda c: "New conversation" in str(c.params.get("text")))
        assert "2 earlier exchanges" in reply.params["text"]
        fake_openai.enqueue_text("I don't know what you said before.")
        await _say(fake_telegram, "what did I say?", lambda c: "before." in str(c.params.get("text")))
    last = fake_openai.completions[-1]
    assert _user_contents(last) == ["what did I say?"]
    assert "blue card" not in str(last.body["messages"])
    with aria.ledger.read() as s:
        assert len(s.exec(select(Run).where(Run.channel == "telegram")).all()) == 3  # the ledger keeps it all


async def test_budget_change_is_confirmed_audited_and_binds_the_next_request(make_aria: MakeAria, fake_telegram: Any,
                                                                            fake_openai: Any) -> None:
    aria = _telegram(make_aria, fake_telegram)
    async with polling(aria):
        shown = await _say(fake_telegram, "/budget", lambda c: "Per request" in str(c.params.get("text")))
        assert "Today's cap: $2.00" in shown.params["text"] and "Spent today: $0.00" in shown.params["text"]

        proposal = await _say(fake_telegram, "/budget request 0.0002",
                              lambda c: "per-request cap" in str(c.params.get("text")))
        assert "(now $0.1000)" in proposal.params["text"]
        confirm = _buttons(proposal)["Confirm"]
        with aria.ledger.read() as s:
            assert s.exec(select(SettingChange)).one().status == "proposed"  # nothing changed before the press
        fake_telegram.press_button(confirm, user_id=OWNER, message_id=proposal.result["message_id"])
        fake_telegram.press_button(confirm, user_id=OWNER, message_id=proposal.result["message_id"])
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: "Done:" in str(c.params.get("text")))
        answers = await fake_telegram.wait_for("answerCallbackQuery", count=2)
        assert sorted(str(a.params.get("text"))[:7] for a in answers) == ["Already", "Done: p"]

        refusal = await _say(fake_telegram, "how is the disk?",
                             lambda c: "I don't know" in str(c.params.get("text")))
    assert "this request's budget" in refusal.params["text"] and "of $0.0002" in refusal.params["text"]
    assert list(_buttons(refusal)) == ["Allow more budget once"]
    assert fake_openai.completions == []  # refused before any call
    with aria.ledger.read() as s:
        change = s.exec(select(SettingChange)).one()
    assert (change.key, change.old_value, change.new_value, change.status, change.user_id) == (
        "budget.request", "100000", "200", "applied", OWNER)


async def test_day_capped_refusal_alerts_and_its_raise_button_answers(make_aria: MakeAria, fake_telegram: Any,
                                                                      fake_openai: Any) -> None:
    aria = _telegram(make_aria, fake_telegram, day_max_usd=0.0001)
    async with polling(aria):
        refusal = await _say(fake_telegram, "how is the disk?",
                             lambda c: "I don't know" in str(c.params.get("text")))
        assert "today's budget" in refusal.params["text"]
        buttons = _buttons(refusal)
        assert list(buttons) == ["Raise today's cap by $0.1000"]  # the only thing that can help
        # The 100 % alert, although nothing was spent: the cap refused the call.
        await fake_telegram.wait_for("sendMessage",
                                     predicate=lambda c: "budget is used up" in str(c.params.get("text")))
        fake_openai.enqueue_text("Disk is fine.")
        fake_telegram.press_button(buttons["Raise today's cap by $0.1000"], user_id=OWNER,
                                   message_id=refusal.result["message_id"])
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Disk is fine.")
        shown = await _say(fake_telegram, "/budget", lambda c: "raised for today" in str(c.params.get("text")))
    assert "Today's cap: $0.1001 ($0.0001 + $0.1000 raised for today)" in shown.params["text"]
    with aria.ledger.read() as s:
        change = s.exec(select(SettingChange)).one()
        runs = s.exec(select(Run).where(Run.channel == "telegram").order_by(Run.id)).all()
    assert change.key.startswith("budget.today:") and change.status == "applied" and change.run_id == runs[0].id
    assert [(r.status, r.stop_reason) for r in runs] == [("budget_exhausted", "budget"), ("ok", "answer")]


async def test_trace_of_a_handoff_and_export_as_documents(make_aria: MakeAria, fake_telegram: Any,
                                                          fake_openai: Any) -> None:
    aria = _telegram(make_aria, fake_telegram, model_strong="gpt-4o-mini")  # one model: nothing to escalate to
    async with polling(aria):
        fake_openai.enqueue_tool_call("handoff", {"reason": "no access to the NAS", "tried": ["ping"]})
        handoff = await _say(fake_telegram, "is the nas up?", lambda c: "I don't know" in str(c.params.get("text")))
        with aria.ledger.read() as s:
            run = s.exec(select(Run).where(Run.channel == "telegram")).one()
        assert f"/trace {run.id}" in handoff.params["text"]
        assert _buttons(handoff) == {}  # cheap and strong are the same model: no "Retry with strong model"
        trace = await _say(fake_telegram, "/trace", lambda c: str(c.params.get("text")).startswith("Run "))
        fake_telegram.add_message("/export 7", user_id=OWNER)
        await eventually(lambda: len(fake_telegram.documents) == 3, timeout=8)
    text = trace.params["text"]
    assert f"Run {run.id} · telegram message" in text and "route cheap" in text
    assert "model gpt-4o-mini:" in text and "tokens" in text and " ms, ok" in text
    assert "End: handoff (stop: handoff)" in text and "1 model call," in text
    assert "Said: I don't know: no access to the NAS." in text
    names = [name for _, name, _, _ in fake_telegram.documents]
    assert [n.split("-")[1] for n in names] == ["runs", "spend", "failures"] and all(n.endswith(".csv") for n in names)
    runs_csv = next(data for _, name, data, _ in fake_telegram.documents if "-runs-" in name)
    rows = list(csv.DictReader(io.StringIO(runs_csv.decode("utf-8-sig"))))
    assert [(r["id"], r["status"], r["request"]) for r in rows if r["channel"] == "telegram"] == [
        (str(run.id), "handoff", "is the nas up?")]
    captions = [caption for _, _, _, caption in fake_telegram.documents]
    assert captions[0].startswith("Runs, ") and "7 days" in captions[0]


async def test_model_shows_circuits_and_spend_and_switches_priced_models(make_aria: MakeAria, fake_telegram: Any,
                                                                        fake_openai: Any) -> None:
    aria = _telegram(make_aria, fake_telegram)
    async with polling(aria):
        fake_openai.enqueue_text("Hi.")
        await _say(fake_telegram, "hello", lambda c: c.params.get("text") == "Hi.")
        shown = await _say(fake_telegram, "/model", lambda c: str(c.params.get("text")).startswith("Models"))
        spent = format_usd(aria.budget.day_spent())
        refused = await _say(fake_telegram, "/model cheap my-local-llm",
                             lambda c: "Not switched" in str(c.params.get("text")))
        switched = await _say(fake_telegram, "/model cheap gpt-4.1-mini",
                              lambda c: "is now gpt-4.1-mini" in str(c.params.get("text")))
        fake_openai.enqueue_text("Hello from the new model.")
        await _say(fake_telegram, "hello again", lambda c: "new model" in str(c.params.get("text")))
    assert f"cheap: gpt-4o-mini, circuit closed, today {spent}" in shown.params["text"] and spent != "$0.00"
    assert "strong: gpt-4o, circuit closed, today $0.00" in shown.params["text"]
    assert "no price is known for my-local-llm" in refused.params["text"]
    assert "(was gpt-4o-mini)" in switched.params["text"]
    assert fake_openai.completions[-1].model == "gpt-4.1-mini"
    with aria.ledger.read() as s:
        change = s.exec(select(SettingChange)).one()
    assert (change.key, change.old_value, change.new_value, change.status) == (
        "model.cheap", "gpt-4o-mini", "gpt-4.1-mini", "applied")
