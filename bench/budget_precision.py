"""Budget precision: 1,000 runs against the fake model with random usage near the caps.

Each run asks for a few tool rounds and then an answer; every reply's usage is scripted: prompt tokens below the
byte bound of what is sent (any byte-level tokenizer guarantees that much), completion tokens often above the
`max_tokens` asked for (the fake then bills exactly `max_tokens`, as providers do). Runs are grouped into days; the
daily cap binds late in each day, the run cap in the longer runs.

Aria reserves the worst case before every call; the baseline is the accounting of the well-known agent libraries,
computed from the same usage sequences: every call asks for the full `max_tokens`, and the limits are checked after
the billed call. The figures are the largest overshoot of a run and of a day (Aria's must be 0), and how much of a
cap went unused when it stopped a run, because reservations are conservative. A last pass runs 8 runs at a time to
check the caps hold under concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aria.agent.state import Request
from aria.app import Aria
from aria.clock import ManualClock
from aria.ledger import MICROS
from aria.llm.budget import caps_from_settings
from aria.llm.pricing import PriceBook, TokenCounts
from bench.common import grid, percentile, settings_for
from tests.fakes import FakeOpenAI

MODEL = "gpt-4o-mini"
WANT = 1024  # max_tokens Aria asks for (ARIA_MAX_OUTPUT_TOKENS), and what the baseline always asks for
RUN_CAP_USD, DAY_CAP_USD = 0.003, 0.08
REQUEST = "what failed recently, and what did I spend today?"  # offers failure_report and spend_report
Usage = tuple[int, int]  # (prompt tokens, completion tokens) scripted for one reply


@dataclass
class RunRecord:
    """One run of the workload: its day, the usage scripted for its replies, and what Aria did."""

    day: int
    usages: list[Usage]
    spent: int = 0
    budget_stop: bool = False
    run_left: int = 0
    day_left: int = 0


@dataclass
class Figures:
    """Overshoots and unused shares of one accounting (micro-dollars)."""

    run_over: list[int] = field(default_factory=list)
    day_over: list[int] = field(default_factory=list)
    run_unused: list[float] = field(default_factory=list)
    day_unused: list[float] = field(default_factory=list)
    calls: int = 0


def script_run(model: FakeOpenAI, rng: random.Random) -> list[Usage]:
    """Queue 1-6 tool rounds and a final answer with random usage; returns the usage sequence."""
    rounds = rng.randint(1, 6)
    usages = [(rng.randint(200, 1200), rng.randint(600, 1600)) for _ in range(rounds + 1)]
    for index, (prompt, completion) in enumerate(usages[:-1]):
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        model.enqueue_tool_call("failure_report", {"limit": index + 1}, usage=usage)  # new arguments each round
    prompt, completion = usages[-1]
    model.enqueue_text("Nothing failed; you spent little.",
                       usage={"prompt_tokens": prompt, "completion_tokens": completion})
    return usages


async def run_workload(aria: Aria, model: FakeOpenAI, clock: ManualClock, runs: int, per_day: int) -> list[RunRecord]:
    """Runs one after another, a new day every `per_day` runs."""
    rng = random.Random(7)
    records: list[RunRecord] = []
    caps = caps_from_settings(aria.settings)
    for index in range(runs):
        if index and index % per_day == 0:
            clock.advance(days=1)
        record = RunRecord(index // per_day, script_run(model, rng))
        outcome = await aria.agent.run(Request(REQUEST, chat_id=None))
        model.clear_script()  # replies a stopped run never asked for must not leak into the next run
        run = aria.ledger.run(outcome.run_id)
        assert run is not None
        record.spent, record.budget_stop = run.cost_micros, outcome.stop_reason == "budget"
        record.run_left, record.day_left = caps.micros - run.cost_micros, aria.budget.day_cap - aria.budget.day_spent()
        records.append(record)
    return records


def aria_figures(aria: Aria, records: list[RunRecord], run_cap: int, day_cap: int, calls: int) -> Figures:
    """Overshoots and unused shares read back from the ledger."""
    figures = Figures(calls=calls)
    figures.run_over = [max(0, r.spent - run_cap) for r in records]
    figures.run_unused = [r.run_left / run_cap for r in records if r.budget_stop and r.run_left < r.day_left]
    start = aria.ledger.clock.now() - dt.timedelta(days=records[-1].day)
    for day in range(records[-1].day + 1):
        key = (start + dt.timedelta(days=day)).astimezone(aria.settings.tz).date().isoformat()
        spent = aria.budget.day_spent(key)
        figures.day_over.append(max(0, spent - day_cap))
        if any(r.day == day and r.budget_stop and r.day_left <= r.run_left for r in records):
            figures.day_unused.append((day_cap - spent) / day_cap)
    return figures


def naive_figures(records: list[RunRecord], prices: PriceBook, run_cap: int, day_cap: int) -> Figures:
    """The same usage, accounted after each billed call, with the full max_tokens asked every time."""
    figures = Figures()
    day_spent: dict[int, int] = {}
    for record in records:
        spent_today = day_spent.get(record.day, 0)
        if spent_today >= day_cap:
            continue  # generous: a run starting on a spent day is refused before its first call
        spent = 0
        for prompt, completion in record.usages:
            cost = prices.cost_micros(MODEL, TokenCounts(prompt=prompt, completion=min(completion, WANT)))
            spent, spent_today, figures.calls = spent + cost, spent_today + cost, figures.calls + 1
            if spent >= run_cap or spent_today >= day_cap:
                break
        day_spent[record.day] = spent_today
        figures.run_over.append(max(0, spent - run_cap))
    figures.day_over = [max(0, spent - day_cap) for spent in day_spent.values()]
    return figures


async def concurrent_check(aria: Aria, model: FakeOpenAI, runs: int, at_once: int) -> tuple[int, int]:
    """Runs `at_once` at a time on a fresh day; returns the largest run and day overshoot (micro-dollars)."""
    assert isinstance(aria.ledger.clock, ManualClock)
    aria.ledger.clock.advance(days=1)
    rng = random.Random(11)
    caps = caps_from_settings(aria.settings)
    worst_run = 0
    for _ in range(0, runs, at_once):
        for _ in range(at_once):
            script_run(model, rng)  # one queue shared by the batch: each reply goes to whichever run asks
        outcomes = await asyncio.gather(*(aria.agent.run(Request(REQUEST, chat_id=None)) for _ in range(at_once)))
        model.clear_script()
        for outcome in outcomes:
            run = aria.ledger.run(outcome.run_id)
            assert run is not None
            worst_run = max(worst_run, run.cost_micros - caps.micros)
    return max(0, worst_run), max(0, aria.budget.day_spent() - aria.budget.day_cap)


def _usd(micros: float) -> str:
    return f"${micros / MICROS:.6f}"


def _share(values: list[float], what: str) -> str:
    if not values:
        return "n/a (the cap never stopped a run)"
    return f"{sum(values) / len(values):.1%} / {percentile(values, 0.9):.1%} ({len(values)} {what})"


def report(ours: Figures, naive: Figures, runs: int, run_cap: int, day_cap: int, concurrent: tuple[int, int]) -> str:
    """The table: Aria next to the check-after-the-call baseline."""
    def over(values: list[int], cap: int) -> str:
        worst = max(values, default=0)
        return f"{_usd(worst)} ({worst / cap:.0%} of the cap), {sum(1 for v in values if v)} over"

    rows = [
        ["model calls made", str(ours.calls), str(naive.calls)],
        ["largest overshoot of a run's cap", over(ours.run_over, run_cap), over(naive.run_over, run_cap)],
        ["largest overshoot of a day's cap", over(ours.day_over, day_cap), over(naive.day_over, day_cap)],
        ["unused share of the run cap when it stopped a run, mean / p90", _share(ours.run_unused, "runs"),
         "0% (overshoots)"],
        ["unused share of the day cap on days it stopped runs, mean / p90", _share(ours.day_unused, "days"),
         "0% (overshoots)"],
        ["8 runs at a time: largest run / day overshoot", f"{_usd(concurrent[0])} / {_usd(concurrent[1])}", "n/a"],
    ]
    body = grid(["figure", "Aria: reserve before each call", "baseline: check after each call"], rows)
    return (f"{body}\n\n{runs} runs, model {MODEL}; run cap ${run_cap / MICROS:.3f}, day cap "
            f"${day_cap / MICROS:.2f}, {WANT} output tokens asked per call.")


async def measure(runs: int, per_day: int) -> str:
    """The sequential workload, the baseline from the same usage, then the concurrent check."""
    clock = ManualClock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC))
    with FakeOpenAI() as model, tempfile.TemporaryDirectory() as folder:
        settings = settings_for(Path(folder), model.base_url, run_max_usd=RUN_CAP_USD, day_max_usd=DAY_CAP_USD,
                                max_output_tokens=WANT)
        aria = Aria.build(settings, clock=clock)
        try:
            run_cap, day_cap = caps_from_settings(settings).micros, aria.budget.day_cap
            records = await run_workload(aria, model, clock, runs, per_day)
            ours = aria_figures(aria, records, run_cap, day_cap, len(model.completions))
            naive = naive_figures(records, aria.prices, run_cap, day_cap)
            concurrent = await concurrent_check(aria, model, max(8, runs // 5), at_once=8)
        finally:
            await aria.aclose()
    return report(ours, naive, runs, run_cap, day_cap, concurrent)


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="runs in the sequential workload (default 1,000)")
    parser.add_argument("--per-day", type=int, default=50, help="runs per simulated day (default 50)")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.runs, args.per_day))
    print(result)
    return result


if __name__ == "__main__":
    main()
