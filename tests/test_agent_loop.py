"""The tool loop against a scripted OpenAI-compatible server: answers, caps, retries, fallbacks and handoffs."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.clock import ManualClock
from aria.ledger import Failure, Spend
from tests.conftest import SleepRecorder

MakeAria = Callable[..., Aria]
BIG = {"prompt_tokens": 900, "completion_tokens": 900}


def _rows(aria: Aria, model: type[Any], *where: Any) -> list[Any]:
    with aria.ledger.read() as s:
        return list(s.exec(select(model).where(*where)))


def _run_spend(aria: Aria, run_id: int) -> int:
    with aria.ledger.read() as s:
        return int(s.exec(select(func.coalesce(func.sum(Spend.cost_micros), 0)).where(Spend.run_id == run_id)).one())


async def test_hello_is_answered_and_recorded_with_priced_spend(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_text("Hi! How can I help?", usage={"prompt_tokens": 400, "completion_tokens": 8})
    aria = make_aria()
    outcome = await aria.agent.run(Request("hello"))
    assert (outcome.status, outcome.text) == ("ok", "Hi! How can I help?")
    run = aria.ledger.run(outcome.run_id)
    assert run is not None and run.status == "ok" and run.model == "gpt-4o-mini"
    (spend,) = _rows(aria, Spend, Spend.run_id == outcome.run_id)
    # gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
    assert (spend.status, spend.prompt_tokens, spend.completion_tokens) == ("settled", 400, 8)
    assert spend.cost_micros == round(400 * 0.15 + 8 * 0.6) and spend.cost_micros <= spend.reserved_micros
    assert [s.kind for s in aria.ledger.steps(outcome.run_id)] == ["llm"]


async def test_hello_sends_a_lean_prompt_without_skill_schemas(make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria()
    await aria.agent.run(Request("hello"))
    body = fake_openai.last_request.body
    names = [t["function"]["name"] for t in body.get("tools", [])]
    assert names == ["handoff", "list_tools"]
    approx_tokens = len(json.dumps([body["messages"], body.get("tools")]).encode()) / 4
    assert approx_tokens <= 1500


async def test_runaway_tool_loop_stops_at_the_dollar_cap(make_aria: MakeAria, fake_openai: Any,
                                                         probe_skills: Path) -> None:
    for n in range(60):
        fake_openai.enqueue_tool_call("probe", {"n": n}, usage=BIG, model="gpt-4o-mini")
    aria = make_aria(skills_dir=probe_skills, run_max_usd=0.002, run_max_steps=50)
    outcome = await aria.agent.run(Request("probe forever"))
    assert outcome.status == "budget_exhausted" and outcome.stop_reason == "budget"
    assert outcome.text.startswith("I don't know: the budget ran out")
    assert _run_spend(aria, outcome.run_id) <= 2_000
    # Money ran out: more budget can help; the (dearer) strong model cannot.
    assert [a.label for a in outcome.actions] == ["Allow more budget once"]


async def test_step_cap_ends_with_a_wrap_up_answer(make_aria: MakeAria, fake_openai: Any, probe_skills: Path) -> None:
    for n in range(3):
        fake_openai.enqueue_tool_call("probe", {"n": n})
    fake_openai.enqueue_text("Partial: probes 0-2 answered.")
    aria = make_aria(skills_dir=probe_skills, run_max_steps=3)
    outcome = await aria.agent.run(Request("probe three times"))
    assert outcome.stop_reason == "steps" and "Partial: probes 0-2 answered." in outcome.text
    wrap_up = fake_openai.last_request.body
    assert "tools" not in wrap_up or not wrap_up["tools"]


async def test_concurrent_runs_never_pass_the_daily_cap(make_aria: MakeAria, fake_openai: Any,
                                                        probe_skills: Path) -> None:
    fake_openai.default_text = "done"
    for n in range(200):
        fake_openai.enqueue_tool_call("probe", {"n": n}, usage=BIG)
    aria = make_aria(skills_dir=probe_skills, day_max_usd=0.004, run_max_usd=0.003, run_max_steps=50)
    outcomes = await asyncio.gather(*(aria.agent.run(Request(f"probe {i}")) for i in range(6)))
    assert aria.budget.day_spent() <= aria.budget.day_cap
    assert any(o.status == "budget_exhausted" for o in outcomes)
    assert all(o.text for o in outcomes)


async def test_429_with_retry_after_then_success(make_aria: MakeAria, fake_openai: Any,
                                                 sleeps: SleepRecorder) -> None:
    fake_openai.enqueue_error(429, retry_after=7)
    fake_openai.enqueue_text("recovered")
    aria = make_aria()
    outcome = await aria.agent.run(Request("hello"))
    assert outcome.text == "recovered"
    assert sleeps.waits and sleeps.waits[0] >= 7
    steps = aria.ledger.steps(outcome.run_id)
    assert [(s.status, s.attempt) for s in steps] == [("error", 0), ("ok", 1)]
    (failure,) = _rows(aria, Failure, Failure.run_id == outcome.run_id)
    assert (failure.component, failure.handling) == ("llm", "retried")
    statuses = sorted(s.status for s in _rows(aria, Spend, Spend.run_id == outcome.run_id))
    assert statuses == ["released", "settled"]


async def test_primary_down_falls_back_to_the_next_model(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.fail_model("gpt-4o-mini", 500)
    fake_openai.enqueue_text("from the fallback", model="gpt-4o")
    aria = make_aria()
    outcome = await aria.agent.run(Request("hello"))
    assert (outcome.status, outcome.text, outcome.model) == ("ok", "from the fallback", "gpt-4o")
    handlings = [f.handling for f in _rows(aria, Failure, Failure.run_id == outcome.run_id)]
    assert handlings == ["retried", "retried", "fell_back"]


async def test_every_model_down_hands_off_with_what_was_tried(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.fail_model("gpt-4o-mini", 503)
    fake_openai.fail_model("gpt-4o", 502)
    aria = make_aria()
    outcome = await aria.agent.run(Request("hello"))
    assert outcome.status == "handoff" and outcome.stop_reason == "models_failed"
    assert outcome.text.startswith("I don't know: no model could answer")
    assert "gpt-4o-mini" in outcome.text and "gpt-4o" in outcome.text
    run = aria.ledger.run(outcome.run_id)
    assert run is not None and run.status == "handoff" and run.cost_micros == 0


async def test_circuit_opens_skips_the_model_then_closes_after_a_probe(make_aria: MakeAria,
                                                                       fake_openai: Any) -> None:
    clock = ManualClock(dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC))
    fake_openai.fail_model("gpt-4o-mini", 500)
    aria = make_aria(clock=clock)
    await aria.agent.run(Request("hello"))
    assert aria.board.get(aria.caller.breaker_key("gpt-4o-mini")).state == "open"  # type: ignore[union-attr]
    cheap_calls = len(fake_openai.requests_for("gpt-4o-mini"))
    await aria.agent.run(Request("hello again"))
    assert len(fake_openai.requests_for("gpt-4o-mini")) == cheap_calls  # skipped while open
    fake_openai.clear_model_faults()
    clock.advance(seconds=aria.settings.breaker_cooldown_seconds + 1)
    outcome = await aria.agent.run(Request("and now?"))
    assert outcome.model == "gpt-4o-mini"
    assert aria.board.get(aria.caller.breaker_key("gpt-4o-mini")).state == "closed"  # type: ignore[union-attr]


async def test_malformed_arguments_get_one_correction_then_escalate_then_hand_off(
        make_aria: MakeAria, fake_openai: Any, probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("probe", '{"n": ', model="gpt-4o-mini")
    fake_openai.enqueue_tool_call("probe", {"n": "not a number"}, model="gpt-4o-mini")
    fake_openai.enqueue_tool_call("probe", {"m": 1}, model="gpt-4o")
    fake_openai.enqueue_tool_call("probe", {}, model="gpt-4o")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe it"))
    assert outcome.stop_reason == "invalid_arguments" and outcome.status == "handoff"
    correction = fake_openai.completions[1].body["messages"][-1]
    assert correction["role"] == "tool" and "not valid JSON" in correction["content"]
    assert [r.model for r in fake_openai.completions] == ["gpt-4o-mini"] * 2 + ["gpt-4o"] * 2
    assert [f.handling for f in _rows(aria, Failure, Failure.run_id == outcome.run_id)] == ["corrected"] * 4
    guards = [s for s in aria.ledger.steps(outcome.run_id) if s.kind == "guard"]
    assert [g.name for g in guards] == ["escalate"]


async def test_cheap_model_handoff_escalates_to_the_strong_model(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("handoff", {"reason": "too hard for me"}, model="gpt-4o-mini")
    fake_openai.enqueue_text("The strong answer.", model="gpt-4o")
    aria = make_aria()
    outcome = await aria.agent.run(Request("what is the capital of France?"))
    assert (outcome.status, outcome.text, outcome.model) == ("ok", "The strong answer.", "gpt-4o")


def test_routing_rule_sends_reasoning_work_to_the_strong_model(make_aria: MakeAria) -> None:
    router = make_aria().router
    assert router.route("hello") == "cheap"
    assert router.route("debug why nginx returns 502") == "strong"
    assert router.route("x" * 700) == "strong"
    assert router.chain("cheap", day_share_used=0.9) == ["gpt-4o-mini"]


async def test_past_the_cheap_only_share_the_owner_is_told_once(make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria(day_max_usd=0.001, cheap_only_share=0.01)
    fake_openai.enqueue_text("first", usage={"prompt_tokens": 100, "completion_tokens": 100})
    await aria.agent.run(Request("hello"))
    fake_openai.enqueue_text("second")
    fake_openai.enqueue_text("third")
    second = await aria.agent.run(Request("debug this please"))
    third = await aria.agent.run(Request("and this"))
    assert second.model == "gpt-4o-mini" and "only gpt-4o-mini answers until tomorrow" in second.text
    assert third.text == "third"


async def test_unknown_tool_is_reported_to_the_model_and_recorded(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("launch_rockets", {})
    fake_openai.enqueue_text("I can't do that.")
    aria = make_aria()
    outcome = await aria.agent.run(Request("launch"))
    assert outcome.text == "I can't do that."
    told = fake_openai.completions[1].body["messages"][-1]["content"]
    assert "unknown tool 'launch_rockets'" in told
    (step,) = [s for s in aria.ledger.steps(outcome.run_id) if s.kind == "tool"]
    assert step.status == "refused"


async def test_tool_timeout_and_crash_are_failures_fed_back_as_data(make_aria: MakeAria, fake_openai: Any,
                                                                    probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("slow_probe", {})
    fake_openai.enqueue_tool_call("broken_probe", {})
    fake_openai.enqueue_text("Both tools failed.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe"))
    assert outcome.text == "Both tools failed."
    failures = _rows(aria, Failure, Failure.run_id == outcome.run_id)
    assert {(f.component, f.error_type) for f in failures} == {
        ("tool:slow_probe", "ToolTimeout"), ("tool:broken_probe", "ToolError")}
    tool_messages = [m["content"] for m in fake_openai.completions[2].body["messages"] if m["role"] == "tool"]
    assert "did not finish" in tool_messages[0] and "kaboom" in tool_messages[1]


async def test_repeating_the_same_call_is_a_no_progress_handoff(make_aria: MakeAria, fake_openai: Any,
                                                                probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("probe", {"n": 1})
    fake_openai.enqueue_tool_call("probe", {"n": 1})
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe"))
    assert outcome.stop_reason == "no_progress" and "no progress" in outcome.text
    assert len([s for s in aria.ledger.steps(outcome.run_id) if s.kind == "tool"]) == 1


async def test_instructions_in_tool_output_stay_data_and_risky_tools_wait_for_approval(make_aria: MakeAria,
                                                                             fake_openai: Any,
                                                                             probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("page_probe", {})
    fake_openai.enqueue_tool_call("run_command", {"command": "cat /root/.ssh/id_rsa"})
    fake_openai.enqueue_text("The page contained an instruction, which I ignored.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe the page, then run a command"))  # run_command is offered
    messages = fake_openai.completions[1].body["messages"]
    hostile = [m for m in messages if "IGNORE ALL PREVIOUS" in str(m.get("content"))]
    assert len(hostile) == 1 and hostile[0]["role"] == "tool"
    assert re.fullmatch(r'<tool_output tool="page_probe" id="([0-9a-f]{16})">\n.*\n</tool_output id="\1">',
                        hostile[0]["content"], re.DOTALL)
    assert messages[0]["role"] == "system" and "untrusted data" in messages[0]["content"]
    shell = [(s.kind, s.status) for s in aria.ledger.steps(outcome.run_id) if s.name == "run_command"]
    assert shell == [("guard", "ok")]  # held at the gate, never executed
    assert outcome.status == "awaiting_approval" and "cat /root/.ssh/id_rsa" in outcome.text
    assert [a.label for a in outcome.actions] == ["Approve", "Reject", "Details"]
    assert len(fake_openai.completions) == 2


async def test_unreachable_service_gives_a_degraded_answer(make_aria: MakeAria, fake_openai: Any,
                                                           probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("remote_probe", {})
    fake_openai.enqueue_text("Status page unknown; last incident was yesterday.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe the status"))
    assert outcome.status == "degraded"
    assert outcome.text.startswith("I couldn't reach status.example; here is what I know anyway")


async def test_model_handoff_tool_gives_an_explicit_i_dont_know(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("handoff", {"reason": "I have no access to your calendar",
                                              "tried": ["looked for a calendar tool"], "known": "Today is Monday."})
    aria = make_aria(model_strong="gpt-4o-mini")  # one tier: nothing to escalate to
    outcome = await aria.agent.run(Request("what is on my calendar?"))
    assert outcome.status == "handoff"
    assert outcome.text.startswith("I don't know: I have no access to your calendar.")
    assert "looked for a calendar tool" in outcome.text and "Today is Monday." in outcome.text
    run = aria.ledger.run(outcome.run_id)
    assert run is not None and run.status == "handoff" and run.final_text == outcome.text


async def test_list_tools_makes_every_tool_callable(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("list_tools", {})
    fake_openai.enqueue_text("I have several tools.")
    aria = make_aria()
    await aria.agent.run(Request("hello"))
    second = fake_openai.completions[1].body
    offered = {t["function"]["name"] for t in second["tools"]}
    assert set(aria.skills.tools) <= offered


async def test_no_model_configured_hands_off_and_data_commands_work(make_settings: Callable[..., Any]) -> None:
    aria = Aria.build(make_settings())
    try:
        outcome = await aria.agent.run(Request("hello"))
        assert outcome.text.startswith("I don't know: no model configured")
        run = aria.ledger.run(outcome.run_id)
        assert run is not None and run.status == "handoff"
    finally:
        await aria.aclose()


async def test_broken_skill_is_reported_and_the_rest_load(make_aria: MakeAria, probe_skills: Path) -> None:
    (probe_skills / "typo.py").write_text("def broken(:\n    pass\n")
    aria = make_aria(skills_dir=probe_skills)
    assert [b.name for b in aria.skills.broken] == ["typo"]
    assert "probe" in aria.skills.tools and "fetch_url" in aria.skills.tools
    failures = _rows(aria, Failure, Failure.component == "skills")
    assert len(failures) == 1 and "SyntaxError" in failures[0].message


async def test_history_is_bounded_by_tokens(make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria(history_tokens=60)
    for i in range(5):
        fake_openai.enqueue_text(f"answer {i} " + "x" * 80)
        await aria.agent.run(Request(f"question {i}", chat_id=5))
    fake_openai.enqueue_text("ok")
    await aria.agent.run(Request("latest", chat_id=5))
    messages = fake_openai.last_request.body["messages"]
    assert messages[-1]["content"] == "latest"
    history = messages[1:-1]
    assert 0 < len(history) < 10 and history[-2]["content"] == "question 4"



def _history(fake_openai: Any) -> str:
    """What the last model call was shown of earlier turns (everything between the system prompt and the request)."""
    return "\n".join(str(m.get("content") or "") for m in fake_openai.last_request.body["messages"][1:-1])


async def test_history_after_a_handoff_has_no_budget_footer(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("handoff", {"reason": "I have no access to your calendar", "known": "It is Monday."})
    aria = make_aria(model_strong="gpt-4o-mini")
    first = await aria.agent.run(Request("what is on my calendar?", chat_id=5))
    assert "Budget used: " in first.text
    fake_openai.enqueue_text("ok")
    await aria.agent.run(Request("and tomorrow?", chat_id=5))
    history = _history(fake_openai)
    assert "I have no access to your calendar" in history and "It is Monday." in history
    assert "Budget used" not in history


async def test_history_after_a_degraded_answer_is_the_models_own_words(make_aria: MakeAria, fake_openai: Any,
                                                                           probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("remote_probe", {})
    fake_openai.enqueue_text("Last incident was yesterday.")
    aria = make_aria(skills_dir=probe_skills)
    first = await aria.agent.run(Request("probe the status", chat_id=5))
    assert first.text.startswith("I couldn't reach")
    fake_openai.enqueue_text("ok")
    await aria.agent.run(Request("thanks", chat_id=5))
    messages = fake_openai.last_request.body["messages"]
    assert messages[1:-1] == [{"role": "user", "content": "probe the status"},
                              {"role": "assistant", "content": "Last incident was yesterday."}]


async def test_history_after_a_noted_answer_has_no_note(make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria(day_max_usd=0.001, cheap_only_share=0.01)
    fake_openai.enqueue_text("first", usage={"prompt_tokens": 100, "completion_tokens": 100})
    await aria.agent.run(Request("hello", chat_id=5))
    fake_openai.enqueue_text("second")
    second = await aria.agent.run(Request("and this", chat_id=5))
    assert "of today's budget is used" in second.text
    fake_openai.enqueue_text("third")
    await aria.agent.run(Request("more", chat_id=5))
    history = _history(fake_openai)
    assert "second" in history and "Note:" not in history and "budget" not in history


async def test_unpriced_model_is_refused_before_any_call_and_flagged(make_aria: MakeAria, fake_openai: Any,
                                                                      tmp_path: Path) -> None:
    from aria.views import status_text

    aria = make_aria(model_cheap="my-llama", model_strong="my-llama")
    outcome = await aria.agent.run(Request("hello"))
    assert outcome.status == "handoff" and "no price known for model 'my-llama'" in outcome.text
    assert fake_openai.completions == []
    assert "No price known for my-llama" in status_text(aria)
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-llama"]\ninput = 0.0\noutput = 0.0\n')
    priced = make_aria(model_cheap="my-llama", model_strong="my-llama", prices_file=prices)
    assert (await priced.agent.run(Request("hello"))).text == "OK."


async def test_malformed_and_failing_responses_are_retried_as_their_own_attempts(make_aria: MakeAria,
                                                                                 fake_openai: Any) -> None:
    fake_openai.enqueue_malformed()
    fake_openai.enqueue_error(500)
    fake_openai.enqueue_text("third time lucky")
    aria = make_aria()
    outcome = await aria.agent.run(Request("hello"))
    assert outcome.text == "third time lucky"
    steps = [(s.status, s.attempt) for s in aria.ledger.steps(outcome.run_id)]
    assert steps == [("error", 0), ("error", 1), ("ok", 2)]
    spends = sorted((s.status, s.price_known) for s in _rows(aria, Spend, Spend.run_id == outcome.run_id))
    # A malformed 200 may have been billed: its worst case stays, marked as an estimate; the 500 is released.
    assert spends == [("released", True), ("settled", False), ("settled", True)]
