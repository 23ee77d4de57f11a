"""Fixed context and the agent loop's own cost, against a bare client call as the floor.

Fixed context: what Aria sends the model for "hello" with every built-in skill installed (system prompt, the tool
schemas chosen for the request, anything else), and for a request that needs one tool, as a typical count (UTF-8
bytes / 4) and as the provable upper bound the budget reserves. The schemas of every built-in tool are counted too,
to show what choosing tools per request saves.

The loop's cost: `Agent.run` on "hello" (no chat, so no history) against one bare `openai` call, both talking to
the same zero-latency scripted model on 127.0.0.1: the difference is routing, reservation and settlement, the run,
step and spend rows, tool selection and the size of the prompt. The Telegram benchmark has the whole turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from aria.agent.state import Request
from aria.agent.toolrun import HANDOFF_SCHEMA, LIST_TOOLS_SCHEMA
from aria.app import Aria
from aria.llm.tokens import prompt_upper_bound
from bench.common import median, percentile, settings_for, table, verdict
from tests.fakes import FakeOpenAI

TARGET_HELLO_TOKENS = 1500


async def _floor(base_url: str, turns: int) -> list[float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    timings: list[float] = []
    try:
        for _ in range(turns):
            started = time.perf_counter()
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
            timings.append(time.perf_counter() - started)
    finally:
        await client.close()
    return timings


async def _aria(aria: Aria, turns: int) -> list[float]:
    timings: list[float] = []
    for _ in range(turns):
        started = time.perf_counter()
        await aria.agent.run(Request("hello", chat_id=None))
        timings.append(time.perf_counter() - started)
    return timings


def typical_tokens(payload: Any) -> int:
    """A typical token count: UTF-8 bytes of the JSON / 4 (what a BPE tokenizer averages on English and JSON)."""
    return len(json.dumps(payload, ensure_ascii=False).encode()) // 4


def _prompt_size(fake: FakeOpenAI) -> tuple[int, int, int]:
    body = fake.completions[-1].body
    messages, tools = body["messages"], body.get("tools", [])
    return typical_tokens([messages, tools]), prompt_upper_bound(messages, tools), len(tools)


async def measure(turns: int) -> dict[str, float]:
    """Run both sides and return the figures."""
    with FakeOpenAI() as fake, tempfile.TemporaryDirectory() as folder:
        aria = Aria.build(settings_for(Path(folder), fake.base_url))
        try:
            await _aria(aria, 5)  # warm-up: imports, price table, connection pool
            await _floor(fake.base_url, 5)
            floor = await _floor(fake.base_url, turns)
            ours = await _aria(aria, turns)
            hello, hello_upper, hello_tools = _prompt_size(fake)
            await aria.agent.run(Request("is https://example.com up? check the url"))
            tool, tool_upper, tool_count = _prompt_size(fake)
            every_tool = [HANDOFF_SCHEMA, LIST_TOOLS_SCHEMA, *(spec.schema() for spec in aria.skills.tools.values())]
        finally:
            await aria.aclose()
    return {
        "turns": turns, "floor_median": median(floor), "floor_p99": percentile(floor, 0.99),
        "aria_median": median(ours), "aria_p99": percentile(ours, 0.99),
        "hello": hello, "hello_upper": hello_upper, "hello_tools": hello_tools,
        "tool": tool, "tool_upper": tool_upper, "tool_count": tool_count,
        "every_tool": typical_tokens(every_tool), "every_tool_count": len(every_tool),
    }


def report(f: dict[str, float]) -> str:
    """A markdown table of the figures."""
    ratio = f["aria_median"] / f["floor_median"]
    return table([
        ("prompt tokens for 'hello', typical / upper bound",
         f"{f['hello']:.0f} / {f['hello_upper']:.0f} ({f['hello_tools']:.0f} tool schemas; target ≤ "
         f"{TARGET_HELLO_TOKENS}: {verdict(f['hello'], TARGET_HELLO_TOKENS)})"),
        ("prompt tokens for a one-tool request, typical / upper bound",
         f"{f['tool']:.0f} / {f['tool_upper']:.0f} ({f['tool_count']:.0f} tool schemas)"),
        ("schemas of every built-in tool, were they all sent",
         f"{f['every_tool']:.0f} tokens ({f['every_tool_count']:.0f} tools)"),
        (f"floor: one bare openai call, median / p99 over {f['turns']:.0f}",
         f"{f['floor_median'] * 1000:.2f} / {f['floor_p99'] * 1000:.2f} ms"),
        ("Aria's agent loop on 'hello' (no Telegram, no history), median / p99",
         f"{f['aria_median'] * 1000:.2f} / {f['aria_p99'] * 1000:.2f} ms ({ratio:.2f}x the floor, "
         f"+{(f['aria_median'] - f['floor_median']) * 1000:.2f} ms)"),
    ])


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=500)
    args = parser.parse_args(argv)
    result = report(asyncio.run(measure(args.turns)))
    print(result)
    return result


if __name__ == "__main__":
    main()
