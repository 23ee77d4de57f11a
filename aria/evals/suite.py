"""`aria eval`: load scenario files, run each, print a table (or JSON), and keep the eval run in the ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from aria.config import Settings
from aria.evals.runner import Mode, Result, now_utc, run_scenario
from aria.evals.scenario import Scenario
from aria.ledger import MICROS, EvalResult, EvalRun, Ledger

JOBS = 6  # scenarios run at once


def shipped_suite() -> Path:
    """The scenarios that ship with Aria: `evals/` beside the package (a checkout or an editable install), else
    `evals/` in the working folder."""
    beside = Path(__file__).resolve().parents[2] / "evals"
    return beside if beside.is_dir() else Path("evals")


async def run_all(scenarios: Sequence[Scenario], mode: Mode, configured: Settings | None,
                  jobs: int = JOBS) -> list[Result]:
    """Run the scenarios, `jobs` at a time, and return their results in the given order. Each runs in its own
    temporary instance with its own servers, on its own event loop in a worker thread: most of a scenario's time is
    spent waiting on retries and timeouts, and a blocking call in one cannot hold up the others."""
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(scenario: Scenario) -> Result:
        async with gate:
            return await asyncio.to_thread(asyncio.run, run_scenario(scenario, mode, configured))

    return list(await asyncio.gather(*(one(s) for s in scenarios)))


def record(ledger: Ledger, results: list[Result], mode: Mode, paths: Sequence[str],
           started: object = None) -> int:
    """Keep one eval run and its scenarios' verdicts in the ledger; returns the eval run's id."""
    with ledger.write_conn() as conn:
        run_id = ledger.insert(conn, EvalRun, {
            "started_at": started or now_utc(), "ended_at": now_utc(), "mode": mode, "paths": " ".join(paths),
            "scenarios": len(results), "passed": sum(r.passed for r in results),
            "failed": sum(not r.passed for r in results),
            "cost_micros": sum(round(r.spend_usd * MICROS) for r in results)})
        for r in results:
            ledger.insert(conn, EvalResult, {
                "eval_run_id": run_id, "name": r.name, "source": r.source, "passed": r.passed,
                "failures": json.dumps(r.failures, ensure_ascii=False), "cost_micros": round(r.spend_usd * MICROS),
                "steps": r.steps, "model_calls": r.model_calls, "seconds": r.seconds})
    return run_id


def table(results: list[Result]) -> str:
    """The results as a plain-text table: scenario, pass/fail, spend, steps, what failed."""
    head = ("scenario", "result", "spend", "steps", "what failed")
    rows = [(r.name, "pass" if r.passed else "FAIL", f"${r.spend_usd:.4f}", str(r.steps),
             "; ".join(r.failures) or "-") for r in results]
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) if rows else len(head[i]) for i in range(4)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]

    passed = sum(r.passed for r in results)
    total = sum(r.spend_usd for r in results)
    return "\n".join([line(head), *(line(row) for row in rows),
                      f"\n{passed}/{len(results)} passed, {len(results) - passed} failed, spend ${total:.4f}"])


def as_json(results: list[Result]) -> str:
    """The results as one JSON array, one object per scenario."""
    return json.dumps([r.to_json() for r in results], ensure_ascii=False, indent=2)
