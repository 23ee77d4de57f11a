"""Lean context with 100 MCP tools installed: what "hello" and a one-tool request cost in prompt tokens, against
the same requests with no MCP server in the same run, and what sending every MCP tool would cost.

The 100-tool server is tests/fakes/mcp_servers.py `many`, over stdio as a real server runs. Tools are chosen per
request (keywords, then `list_tools` to reveal the rest), so installing a large server costs a request nothing
until it needs one of its tools. Also timed: the first answer right after start-up while the server is still
connecting (the bot never waits for its MCP servers).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aria.agent.state import Request
from aria.agent.toolrun import HANDOFF_SCHEMA, LIST_TOOLS_SCHEMA
from aria.app import Aria
from aria.llm.tokens import prompt_upper_bound
from bench.common import settings_for, table, verdict
from bench.turn import typical_tokens
from tests.fakes import FakeOpenAI
from tests.mcp_support import FAKES, write_config

TARGET_HELLO = 1500
TARGET_ONE_TOOL = 2500
ONE_TOOL_REQUEST = "check the disk of db1"


def _largest_prompt(fake: FakeOpenAI, since: int) -> tuple[int, int, int]:
    """The run's largest prompt (typical tokens, upper bound) and the most tool schemas any of its calls carried."""
    sizes = [(typical_tokens([r.body["messages"], r.body.get("tools", [])]),
              prompt_upper_bound(r.body["messages"], r.body.get("tools", [])), len(r.body.get("tools", [])))
             for r in fake.completions[since:]]
    return max(s[0] for s in sizes), max(s[1] for s in sizes), max(s[2] for s in sizes)


async def _requests(aria: Aria, fake: FakeOpenAI, tool: str | None) -> dict[str, float]:
    since = len(fake.completions)
    await aria.agent.run(Request("hello"))
    hello, hello_upper, hello_tools = _largest_prompt(fake, since)
    since = len(fake.completions)
    if tool is not None:
        fake.enqueue_tool_call(tool, {"target": "db1"})
        fake.enqueue_text("db1's disk is fine.")
        outcome = await aria.agent.run(Request(ONE_TOOL_REQUEST))
        assert outcome.status == "ok", outcome.text
    else:
        await aria.agent.run(Request(ONE_TOOL_REQUEST))
    one, one_upper, one_tools = _largest_prompt(fake, since)
    return {"hello": hello, "hello_upper": hello_upper, "hello_tools": hello_tools, "one": one,
            "one_upper": one_upper, "one_tools": one_tools}


async def measure() -> dict[str, Any]:
    """Both sides in one run: no MCP server, then the 100-tool server."""
    with FakeOpenAI() as fake, tempfile.TemporaryDirectory() as folder:
        warm = Aria.build(settings_for(Path(folder) / "warm", fake.base_url))
        try:
            await warm.agent.run(Request("hello"))  # imports and first-use costs, so both builds below start equal
        finally:
            await warm.aclose()
        base = Aria.build(settings_for(Path(folder) / "base", fake.base_url))
        try:
            started = time.perf_counter()  # the first answer of a fresh build, as with the server below
            await base.agent.run(Request("hello"))
            base_first = time.perf_counter() - started
            baseline = await _requests(base, fake, None)
        finally:
            await base.aclose()
        config = write_config(Path(folder) / "mcp.toml", {"many": {
            "command": sys.executable, "args": [str(FAKES), "many"], "timeout": 10, "keywords": ["host"]}})
        aria = Aria.build(settings_for(Path(folder) / "mcp", fake.base_url, mcp_config=config))
        try:
            aria.mcp.start()
            started = time.perf_counter()
            await aria.agent.run(Request("hello"))
            first = time.perf_counter() - started
            still_connecting = aria.mcp.servers["many"].state != "up"
            async with asyncio.timeout(60):
                await aria.mcp.servers["many"].connected.wait()
            mcp_tools = [s for s in aria.skills.tools.values() if s.skill == "mcp:many"]
            ours = await _requests(aria, fake, "many__check_disk")
            every = [HANDOFF_SCHEMA, LIST_TOOLS_SCHEMA, *(s.schema() for s in aria.skills.tools.values())]
        finally:
            await aria.aclose()
    return {"baseline": baseline, "ours": ours, "mcp_tools": len(mcp_tools), "every": typical_tokens(every),
            "every_count": len(every), "first": first, "base_first": base_first, "connecting": still_connecting}


def report(f: dict[str, Any]) -> str:
    """A markdown table of the figures."""
    base, ours = f["baseline"], f["ours"]
    return table([
        ("MCP tools installed", f"{f['mcp_tools']} (one stdio server)"),
        ("prompt tokens for 'hello', typical / upper bound",
         f"{ours['hello']:.0f} / {ours['hello_upper']:.0f}, {ours['hello_tools']:.0f} tool schemas (no MCP server: "
         f"{base['hello']:.0f} / {base['hello_upper']:.0f}; target ≤ {TARGET_HELLO}: "
         f"{verdict(ours['hello'], TARGET_HELLO)})"),
        (f"prompt tokens for a one-tool request ('{ONE_TOOL_REQUEST}', calls many__check_disk), largest call",
         f"{ours['one']:.0f} / {ours['one_upper']:.0f}, {ours['one_tools']:.0f} tool schemas (no MCP server: "
         f"{base['one']:.0f} / {base['one_upper']:.0f}; target ≤ {TARGET_ONE_TOOL}: "
         f"{verdict(ours['one'], TARGET_ONE_TOOL)})"),
        ("schemas of every tool, were they all sent", f"{f['every']:.0f} tokens ({f['every_count']:.0f} tools)"),
        ("first 'hello' right after start-up",
         f"{f['first'] * 1000:.1f} ms, server {'still connecting' if f['connecting'] else 'already up'} "
         f"(no MCP server: {f['base_first'] * 1000:.1f} ms)"),
    ])


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    result = report(asyncio.run(measure()))
    print(result)
    return result


if __name__ == "__main__":
    main()
