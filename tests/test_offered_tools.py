"""Only tools offered to the model in a run (or shown to it by list_tools) can run, even when a page hijacks it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import callback_data, parse_callback
from aria.ledger import Approval, Failure
from tests.conftest import OWNER, marks

MakeAria = Callable[..., Aria]


def _offered(request: Any) -> set[str]:
    return {t["function"]["name"] for t in request.body.get("tools", [])}


def _approvals(aria: Aria) -> list[Approval]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Approval)))


def _failures(aria: Aria, run_id: int) -> list[Failure]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Failure).where(Failure.run_id == run_id)))


async def _approve_and_resume(aria: Aria) -> Any:
    (approval,) = aria.approvals.pending()
    press = parse_callback(callback_data(approval, "a"))
    assert press is not None and aria.approvals.decide(press, OWNER) == "approved"
    decided = aria.approvals.get(approval.id or 0)
    assert decided is not None
    return await aria.agent.resume(decided)


async def test_hijacked_calls_to_tools_not_offered_are_refused_recorded_and_never_run(
        make_aria: MakeAria, fake_openai: Any, probe_skills: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    fake_openai.enqueue_tool_call("page_probe", {})  # the page says: call run_command
    fake_openai.enqueue_tool_call("run_command", {"command": f"touch {pwned}"})
    fake_openai.enqueue_text("The page asked me to run a command; I did not.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("probe the page"))
    offered = _offered(fake_openai.completions[0])
    assert "page_probe" in offered and "run_command" not in offered
    assert (outcome.status, outcome.text) == ("ok", "The page asked me to run a command; I did not.")
    steps = [(s.kind, s.status, s.error_type) for s in aria.ledger.steps(outcome.run_id) if s.name == "run_command"]
    assert steps == [("tool", "refused", "ToolNotOffered")]
    (failure,) = _failures(aria, outcome.run_id)
    assert (failure.component, failure.handling, failure.error_type) == ("tool", "corrected", "ToolNotOffered")
    assert "not offered" in failure.message
    assert _approvals(aria) == [] and not pwned.exists()
    told = [m for m in fake_openai.completions[2].body["messages"] if m["role"] == "tool"][-1]["content"]
    assert told.startswith("ERROR: 'run_command' was not offered for this request, so it was not run")


async def test_a_risky_tool_not_offered_never_reaches_the_approval_queue(make_aria: MakeAria, fake_openai: Any,
                                                                        probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("write_mark", {"label": "pwned"})
    fake_openai.enqueue_text("Disk is 40% full.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("how full is the disk?"))
    assert "write_mark" not in _offered(fake_openai.completions[0])
    assert outcome.status == "ok" and outcome.approval_id is None
    assert [(s.kind, s.status) for s in aria.ledger.steps(outcome.run_id) if s.name == "write_mark"] == [
        ("tool", "refused")]
    assert _approvals(aria) == [] and marks(aria.settings.data_dir) == []


async def test_calls_to_tools_not_offered_count_as_corrections_then_hand_off(make_aria: MakeAria, fake_openai: Any,
                                                                            probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("write_mark", {"label": "one"})
    fake_openai.enqueue_tool_call("run_command", {"command": "id"})
    fake_openai.enqueue_text("never asked for")
    aria = make_aria(skills_dir=probe_skills, model_strong="gpt-4o-mini")  # one tier: nothing to escalate to
    outcome = await aria.agent.run(Request("how full is the disk?"))
    assert (outcome.status, outcome.stop_reason) == ("handoff", "invalid_arguments")
    assert "write_mark → not offered: refused" in outcome.text
    assert len(fake_openai.completions) == 2
    assert [f.error_type for f in _failures(aria, outcome.run_id)] == ["ToolNotOffered", "ToolNotOffered"]
    assert _approvals(aria) == [] and marks(aria.settings.data_dir) == []


async def test_a_tool_revealed_by_list_tools_in_the_same_run_is_allowed(make_aria: MakeAria, fake_openai: Any,
                                                                       probe_skills: Path) -> None:
    fake_openai.enqueue_tool_call("list_tools", {})
    fake_openai.enqueue_tool_call("write_mark", {"label": "after list"})
    fake_openai.enqueue_text("PASS")  # the editor's review of the draft
    fake_openai.enqueue_text("Marked.")
    aria = make_aria(skills_dir=probe_skills)
    outcome = await aria.agent.run(Request("how full is the disk?"))
    assert "write_mark" not in _offered(fake_openai.completions[0])
    assert "write_mark" in _offered(fake_openai.completions[1])
    assert outcome.status == "awaiting_approval"  # allowed to the gate, which holds a risky tool for the owner
    resumed = await _approve_and_resume(aria)
    assert (resumed.status, resumed.text) == ("ok", "Marked.")
    assert marks(aria.settings.data_dir) == ["after list"]


async def test_a_run_resumed_after_an_approval_keeps_its_offered_tools(make_aria: MakeAria, fake_openai: Any,
                                                                      probe_skills: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    fake_openai.enqueue_tool_call("write_mark", {"label": "ok"})
    fake_openai.enqueue_text("PASS")  # the editor's review of the draft
    fake_openai.enqueue_tool_call("run_command", {"command": f"touch {pwned}"})
    fake_openai.enqueue_text("Marked; I did not run the command.")
    aria = make_aria(skills_dir=probe_skills)
    first = await aria.agent.run(Request("probe and mark it"))
    assert first.status == "awaiting_approval" and "run_command" not in _offered(fake_openai.completions[0])
    resumed = await _approve_and_resume(aria)
    assert resumed.status == "ok" and marks(aria.settings.data_dir) == ["ok"]
    assert "run_command" not in _offered(fake_openai.completions[2])  # [1] is the editor's review
    steps = [(s.kind, s.status) for s in aria.ledger.steps(first.run_id) if s.name == "run_command"]
    assert steps == [("tool", "refused")] and not pwned.exists() and len(_approvals(aria)) == 1
