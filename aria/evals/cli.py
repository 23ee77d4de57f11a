"""The body of `aria eval`: exit 0 when every scenario passed, 1 on any failure, 2 for files that cannot run."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from aria.config import Settings
from aria.evals.runner import Mode, now_utc
from aria.evals.scenario import ScenarioError, load
from aria.evals.suite import as_json as results_json
from aria.evals.suite import record, run_all, shipped_suite, table
from aria.ledger import Ledger
from aria.ledger.redact import Redactor
from aria.logs import configure_logging


def run_eval(settings: Settings, paths: list[Path], *, as_json: bool, live: bool) -> int:
    """Load, run, print and record; returns the exit code."""
    # Logs go to stderr (configure_logging's handler): with --json, stdout carries the JSON array alone.
    configure_logging("WARNING" if settings.log_level.upper() in ("INFO", "DEBUG") else settings.log_level,
                      settings.secrets())
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    chosen = paths or [shipped_suite()]
    try:
        scenarios = load(chosen)
    except ScenarioError as exc:
        for problem in exc.problems:
            print(f"scenario error: {problem}", file=sys.stderr)
        return 2
    if live and not settings.model_configured:
        print("config error: --live needs a model: set OPENAI_API_KEY or OPENAI_BASE_URL", file=sys.stderr)
        return 2
    mode: Mode = "live" if live else "scripted"
    started = now_utc()
    results = asyncio.run(run_all(scenarios, mode, settings if live else None))
    print(results_json(results) if as_json else table(results))
    ledger = Ledger.open(settings.db_path, redactor=Redactor(settings.secrets()))
    try:
        eval_id = record(ledger, results, mode, [str(p) for p in chosen], started)
    finally:
        ledger.engine.dispose()
    print(f"eval run {eval_id} recorded in {settings.db_path}", file=sys.stderr)
    return 0 if all(r.passed for r in results) else 1
