"""MCP tools through Aria's tool layer: fenced results, isError, schema checks and risky tools against the test
server in-process; a hanging server, a crashing one and one that cannot start over stdio, as real ones run."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import callback_data, parse_callback
from aria.commands import answer
from aria.config import Settings
from aria.ledger import Failure, Run
from aria.mcp.cli import manual_call
from tests.conftest import OWNER
from tests.fakes.mcp_servers import basic
from tests.mcp_support import FAKES, connected, fake_server, write_config

MakeAria = Callable[..., Aria]


def _failures(aria: Aria) -> list[Failure]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Failure)))


def _tool_messages(request: Any) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "tool"]


@pytest.fixture
async def inproc(make_settings: Callable[..., Settings], fake_openai: Any, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Aria]:
    """Aria with the test server `basic` in-process (configured as stdio, connected directly), and up."""
    monkeypatch.setenv("MCP_FAKE_NOTES", str(tmp_path / "notes.txt"))
    settings = make_settings(openai_base_url=fake_openai.base_url, openai_api_key="sk-test-key-0000000000000000",
                             mcp_config=_basic(tmp_path))
    aria = Aria.build(settings, mcp_targets={"basic": basic()})
    await connected(aria, "basic")
    yield aria
    await aria.aclose()


def _basic(tmp_path: Path, **fields: Any) -> Path:
    env = {"MCP_FAKE_NOTES": str(tmp_path / "notes.txt"), **fields.pop("env", {})}
    return write_config(tmp_path / "mcp.toml", {"basic": fake_server("basic", env=env, timeout=1, **fields)})


async def test_an_mcp_result_reaches_the_model_fenced_as_untrusted_and_the_owner_gets_an_answer(
        inproc: Aria, fake_openai: Any, tmp_path: Path) -> None:
    aria = inproc
    fake_openai.enqueue_tool_call("basic__echo", {"text": "hi"})
    fake_openai.enqueue_text("The server said hi.")
    outcome = await aria.agent.run(Request("echo hi"))
    assert (outcome.status, outcome.text) == ("ok", "The server said hi.")
    offered = {t["function"]["name"] for t in fake_openai.completions[0].body["tools"]}
    assert "basic__echo" in offered
    (told,) = _tool_messages(fake_openai.completions[1])
    assert told.startswith('<tool_output tool="basic__echo"') and "echo: hi" in told
    steps = [(s.kind, s.name, s.status, s.result) for s in aria.ledger.steps(outcome.run_id)]
    assert ("tool", "basic__echo", "ok", "echo: hi") in steps
    assert any(kind == "guard" and result == "MCP server basic (basic__echo)" for kind, _, _, result in steps)


async def test_an_is_error_result_is_a_tool_failure_the_model_sees(
        inproc: Aria, fake_openai: Any, tmp_path: Path) -> None:
    aria = inproc
    fake_openai.enqueue_tool_call("basic__fail", {})
    fake_openai.enqueue_text("The quota check failed.")
    outcome = await aria.agent.run(Request("run the fail check"))
    (told,) = _tool_messages(fake_openai.completions[1])
    assert "ERROR (ToolError): fail on MCP server basic reported an error" in told
    (failure,) = [f for f in _failures(aria) if f.run_id == outcome.run_id]
    assert (failure.component, failure.handling) == ("tool:basic__fail", "reported")
    assert aria.mcp.servers["basic"].state == "up"


async def test_arguments_are_checked_against_the_servers_schema_before_the_call(
        inproc: Aria, fake_openai: Any, tmp_path: Path) -> None:
    aria = inproc
    fake_openai.enqueue_tool_call("basic__add", {"a": "one", "b": 2})
    fake_openai.enqueue_text("I could not add those.")
    outcome = await aria.agent.run(Request("add one and two"))
    (told,) = _tool_messages(fake_openai.completions[1])
    assert "invalid arguments for basic__add: a: 'one' is not of type 'integer'" in told
    (step,) = [s for s in aria.ledger.steps(outcome.run_id) if s.name == "basic__add"]
    assert (step.status, step.error_type) == ("refused", "ToolInputError")


async def test_a_hanging_server_ends_in_a_degraded_answer_within_its_timeout_while_the_bot_keeps_answering(
        make_aria: MakeAria, fake_openai: Any, tmp_path: Path) -> None:
    aria = make_aria(mcp_config=_basic(tmp_path))
    await connected(aria, "basic")
    fake_openai.enqueue_tool_call("basic__hang", {})
    fake_openai.enqueue_text("pong")
    fake_openai.enqueue_text("The server did not answer.")
    started = time.monotonic()
    hung = asyncio.create_task(aria.agent.run(Request("call hang")))
    await fake_openai.wait_for_requests(1)
    other = await aria.agent.run(Request("ping"))
    assert (other.status, other.text) == ("ok", "pong") and not hung.done()
    outcome = await hung
    assert time.monotonic() - started < 4  # the server's timeout is 1 s
    assert outcome.status == "degraded"
    assert outcome.text.startswith("I couldn't reach MCP server basic; here is what I know anyway")
    (failure,) = [f for f in _failures(aria) if f.run_id == outcome.run_id]
    assert (failure.component, failure.handling, failure.error_type) == ("tool:basic__hang", "degraded",
                                                                         "ConnectorDown")
    assert "no answer within 1s" in failure.message
    # A timeout does not unload the server's tools.
    assert aria.mcp.servers["basic"].state == "up" and "basic__hang" in aria.skills.tools
    assert await aria.mcp.servers["basic"].call("echo", {"text": "still here"}) == "echo: still here"


async def test_a_server_that_dies_is_reported_and_reconnected(make_aria: MakeAria, fake_openai: Any,
                                                             tmp_path: Path) -> None:
    aria = make_aria(mcp_config=_basic(tmp_path))
    aria.mcp.servers["basic"].backoff_first = 0.1
    await connected(aria, "basic")
    fake_openai.enqueue_tool_call("basic__crash", {})
    fake_openai.enqueue_text("The server went away.")
    outcome = await aria.agent.run(Request("crash the server"))
    assert outcome.status == "degraded"
    (told,) = _tool_messages(fake_openai.completions[1])
    assert "MCP server basic is unreachable: the connection closed during the call" in told
    await asyncio.sleep(0.05)
    await connected(aria, "basic")
    assert await aria.mcp.servers["basic"].call("add", {"a": 2, "b": 3}) == "5"
    components = [(f.component, f.handling) for f in _failures(aria)]
    assert ("mcp:basic", "retried") in components


async def test_a_server_that_cannot_start_is_reported_and_its_tools_are_unavailable(
        inproc: Aria, make_aria: MakeAria, fake_openai: Any, tmp_path: Path) -> None:
    await inproc.mcp.stop()  # its tools were seen (and pinned) once, in the same database
    config = write_config(tmp_path / "broken.toml", {"basic": fake_server("broken", timeout=1)})
    aria = make_aria(mcp_config=config)
    aria.mcp.start()
    await aria.mcp.wait_started(10)
    fake_openai.enqueue_tool_call("basic__echo", {"text": "hi"})
    fake_openai.enqueue_text("The echo server is down.")
    outcome = await aria.agent.run(Request("echo hi"))
    assert outcome.status == "degraded"
    (told,) = _tool_messages(fake_openai.completions[1])
    assert "MCP server basic is unreachable: not connected" in told
    assert "cannot start: missing credentials" in told
    assert ("mcp:basic", "retried") in [(f.component, f.handling) for f in _failures(aria)]
    (status,) = await answer(aria, "status", [])
    assert "MCP servers: 0 of 1 up" in status.text and "basic: down" in status.text
    (skills,) = await answer(aria, "skills", [])
    assert "mcp:basic: MCP server basic" in skills.text and "basic: down" in skills.text
    assert "basic__echo (safe, auto)" in skills.text


async def test_a_risky_mcp_tool_waits_for_approve_and_then_runs_once(
        inproc: Aria, fake_openai: Any, tmp_path: Path) -> None:
    aria = inproc
    fake_openai.enqueue_tool_call("basic__note", {"text": "buy milk"})
    fake_openai.enqueue_text("Noted.")
    outcome = await aria.agent.run(Request("note buy milk"))
    assert outcome.status == "awaiting_approval" and not (tmp_path / "notes.txt").exists()
    (approval,) = aria.approvals.pending()
    assert approval.tool == "basic__note"
    press = parse_callback(callback_data(approval, "a"))
    assert press is not None and aria.approvals.decide(press, OWNER) == "approved"
    decided = aria.approvals.get(approval.id or 0)
    assert decided is not None
    resumed = await aria.agent.resume(decided)
    assert (resumed.status, resumed.text) == ("ok", "Noted.")
    assert (tmp_path / "notes.txt").read_text() == "buy milk\n"


async def test_a_manual_call_goes_through_the_same_gate_and_is_recorded(inproc: Aria, tmp_path: Path) -> None:
    ran = await manual_call(inproc, "basic", "add", '{"a": 2, "b": 40}', confirm=lambda why: False)
    assert (ran.status, ran.summary) == ("ok", "basic__add → ok") and "42" in ran.content
    asked: list[str] = []
    refused = await manual_call(inproc, "basic", "note", '{"text": "x"}',
                                confirm=lambda why: asked.append(why) or False)
    assert refused.status == "approval" and asked == ["basic__note needs approval: basic__note is a risky action"]
    assert not (tmp_path / "notes.txt").exists()
    noted = await manual_call(inproc, "basic", "note", '{"text": "y"}', confirm=lambda why: True)
    assert noted.status == "ok" and (tmp_path / "notes.txt").read_text() == "y\n"
    with inproc.ledger.read() as s:
        runs = list(s.exec(select(Run).where(Run.channel == "cli")))
    assert [r.status for r in runs] == ["ok", "failed", "ok"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_streamable_http_server_gets_its_headers_from_the_environment_and_never_shows_them(
        make_aria: MakeAria, fake_openai: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, token = _free_port(), "tok-9f8e7d6c5b4a39281706"
    server = await asyncio.create_subprocess_exec(sys.executable, str(FAKES), "http", str(port), env={
        **os.environ, "MCP_FAKE_TOKEN": token, "MCP_FAKE_NOTES": str(tmp_path / "notes.txt")})
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        config = write_config(tmp_path / "mcp.toml", {
            "hosted": {"url": url, "headers": {"Authorization": "Bearer ${HOSTED_TOKEN}"}, "timeout": 5},
            "wrong": {"url": url, "headers": {"Authorization": "Bearer ${WRONG_TOKEN}"}, "timeout": 5},
        })
        monkeypatch.setenv("HOSTED_TOKEN", token)
        monkeypatch.setenv("WRONG_TOKEN", "tok-0000000000000000000000")
        aria = make_aria(mcp_config=config)
        for connection in aria.mcp.servers.values():
            connection.backoff_first = 0.2  # the server may still be starting
        await connected(aria, "hosted")
        assert await aria.mcp.servers["hosted"].call("echo", {"text": "over http"}) == "echo: over http"
        wrong = aria.mcp.servers["wrong"]
        await asyncio.wait_for(wrong.settled.wait(), 10)
        shown = "\n".join([(await answer(aria, "mcp", []))[0].text, *(f.message for f in _failures(aria))])
        assert wrong.state != "up" and "hosted: up" in shown and "wrong: up" not in shown
        assert token not in shown and "tok-0000000000000000000000" not in shown
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 5)
