"""`aria mcp list` and `aria mcp call`: the servers' state, and a manual call through the same layer as the model's
(schema check, gate, timeout, breaker, step and failure rows), for debugging a connector. `aria.cli` parses the
command line and calls these."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aria.agent.provenance import Provenance
from aria.agent.state import Request
from aria.agent.toolrun import ToolRun
from aria.ledger import Run
from aria.ledger.models import RunStatus
from aria.llm.budget import caps_from_settings
from aria.llm.client import CallScope, ToolCallRequest
from aria.mcp.tools import aria_name
from aria.mcp.views import list_text

if TYPE_CHECKING:
    from aria.app import Aria

START_WAIT_CAP = 60.0


def start_wait(aria: Aria) -> float:
    """How long to wait for the servers to connect: the longest configured timeout, within reason."""
    return min(START_WAIT_CAP, max((s.timeout for s in aria.mcp.config.servers.values()), default=1.0) + 1.0)


async def listing(aria: Aria) -> str:
    """Start every server, wait for each to connect or fail, and describe them."""
    aria.mcp.start()
    await aria.mcp.wait_started(start_wait(aria))
    return list_text(aria.mcp)


async def manual_call(aria: Aria, server: str, tool: str, arguments: str, *,
                      confirm: Callable[[str], bool]) -> ToolRun:
    """One call as the model would make it, recorded as a `cli` run. A call the gate sends for approval runs only
    when `confirm` (shown why) says yes."""
    aria.mcp.start()
    await aria.mcp.wait_started(start_wait(aria))
    name = aria_name(server, tool)
    run_id = aria.ledger.start_run(Run(trigger="command", channel="cli", request=f"aria mcp call {server} {tool}",
                                       started_at=aria.ledger.now()))
    caps = caps_from_settings(aria.settings)
    scope = CallScope(run_id=run_id, caps=caps, deadline=time.monotonic() + caps.seconds)
    call = ToolCallRequest(id="cli", name=name, arguments=arguments)
    ctx = aria.tool_context(run_id, Request(text=call.name, trigger="command", channel="cli"))
    ran = await aria.agent.tools.run(scope, call, ctx, offered={name}, provenance=Provenance())
    if ran.status == "approval" and confirm(f"{name} needs approval: {ran.reason}"):
        ran = await aria.agent.tools.run(scope, call, ctx, offered={name}, provenance=Provenance(), approved=True)
    status: RunStatus = "ok" if ran.status == "ok" else "degraded" if ran.status == "degraded" else "failed"
    aria.ledger.finish_run(run_id, status, stop_reason="answer" if status == "ok" else "error",
                           final_text=ran.summary)
    return ran
