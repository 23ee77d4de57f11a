"""Per-turn overhead of Aria's loop and the fixed prompt it sends, against a bare client call as the floor.

Both sides talk to the same zero-latency scripted model server on 127.0.0.1, so the difference is what Aria adds:
routing, reservation and settlement, step and spend rows, tool selection and the prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import openai

from aria.agent.state import Request
from aria.app import Aria
from aria.config import Settings
from aria.llm.tokens import prompt_upper_bound
from tests.fakes import FakeOpenAI


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


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


def _prompt_size(fake: FakeOpenAI) -> tuple[int, int]:
    body = fake.completions[-1].body
    messages, tools = body["messages"], body.get("tools", [])
    typical = len(json.dumps([messages, tools], ensure_ascii=False).encode()) // 4
    return typical, prompt_upper_bound(messages, tools)


async def measure(turns: int) -> dict[str, float]:
    """Run both sides and return the figures."""
    with FakeOpenAI() as fake, tempfile.TemporaryDirectory() as folder:
        settings = Settings(_env_file=None, data_dir=Path(folder), openai_base_url=fake.base_url,  # type: ignore[call-arg]
                            openai_api_key="bench", day_max_usd=1000.0, run_max_usd=1.0)
        aria = Aria.build(settings)
        try:
            await _aria(aria, 5)  # warm-up: imports, price table, connection pool
            await _floor(fake.base_url, 5)
            floor = await _floor(fake.base_url, turns)
            ours = await _aria(aria, turns)
            hello_typical, hello_upper = _prompt_size(fake)
            await aria.agent.run(Request("is https://example.com up? check the url"))
            tool_typical, tool_upper = _prompt_size(fake)
        finally:
            await aria.aclose()
    return {
        "turns": turns,
        "floor_median_ms": statistics.median(floor) * 1000, "floor_p99_ms": _percentile(floor, 0.99) * 1000,
        "aria_median_ms": statistics.median(ours) * 1000, "aria_p99_ms": _percentile(ours, 0.99) * 1000,
        "overhead_median_ms": (statistics.median(ours) - statistics.median(floor)) * 1000,
        "ratio": statistics.median(ours) / statistics.median(floor),
        "hello_prompt_tokens": hello_typical, "hello_prompt_upper_bound": hello_upper,
        "one_tool_prompt_tokens": tool_typical, "one_tool_prompt_upper_bound": tool_upper,
    }


def report(figures: dict[str, float]) -> str:
    """A markdown table of the figures."""
    rows = [
        ("turns measured", f"{figures['turns']:.0f}"),
        ("floor: bare client call, median / p99",
         f"{figures['floor_median_ms']:.2f} / {figures['floor_p99_ms']:.2f} ms"),
        ("Aria turn, median / p99", f"{figures['aria_median_ms']:.2f} / {figures['aria_p99_ms']:.2f} ms"),
        ("overhead per turn, median", f"{figures['overhead_median_ms']:.2f} ms ({figures['ratio']:.2f}x the floor)"),
        ("prompt tokens for 'hello' (typical / upper bound)",
         f"{figures['hello_prompt_tokens']:.0f} / {figures['hello_prompt_upper_bound']:.0f}"),
        ("prompt tokens for a one-tool request (typical / upper bound)",
         f"{figures['one_tool_prompt_tokens']:.0f} / {figures['one_tool_prompt_upper_bound']:.0f}"),
    ]
    return "| figure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=500)
    args = parser.parse_args(argv)
    table = report(asyncio.run(measure(args.turns)))
    print(table)
    return table


if __name__ == "__main__":
    main()
