"""A year of heavy use in the ledger: how big the database gets, how long recording a run takes on it, and how long
the digest's queries and charts take.

The history (about 300,000 runs, 2,000,000 steps, 500,000 spend rows and 30,000 failures at `--scale 1`) is written
straight into a migrated ledger with `INSERT ... SELECT` over recursive CTEs, in the shapes the recorder writes
(UTC times as `YYYY-MM-DD HH:MM:SS.ffffff`, micro-dollars, ISO local days). Runs are spread evenly over the 365
days ending now, with a realistic mix of statuses, skills, models and failures. The baseline is the same digest on
a light year (scale 0.001, about one run a day), measured in the same process.

    python -m bench.ledger_year [--scale 0.001]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aria.app import Aria
from aria.config import Settings
from aria.digest.data import load_digest
from aria.digest.service import DigestService
from aria.ledger import Ledger, Run, Step
from aria.outbox import Outbox
from bench.common import median, ms, percentile, table, verdict

RUNS, STEPS, SPENDS, FAILURES = 300_000, 2_000_000, 500_000, 30_000
DAYS = 365
TARGET_DIGEST_SECONDS = 1.0
REPEATS = 5
BASELINE_SCALE = 0.001  # a light year (about one run a day) for the same digest, to show what volume costs

# A UTC epoch second as the recorder stores times.
_TS = "strftime('%Y-%m-%d %H:%M:%S', {0}, 'unixepoch') || '.000000'"
_SEQ = "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1) "

_RUNS_SQL = _SEQ + f"""
INSERT INTO run (id, "trigger", channel, chat_id, user_id, request, route, model, status, stop_reason, cap_tokens,
                 cap_micros, cap_steps, cap_seconds, prompt_tokens, completion_tokens, cost_micros, steps, started_at,
                 ended_at, final_text)
SELECT i + 1, 'message', CASE WHEN i % 97 = 0 THEN 'scheduler' ELSE 'telegram' END, 1001, 1001,
       'synthetic request number ' || i || ': check the servers and summarise',
       CASE WHEN i % 5 = 0 THEN 'strong' ELSE 'cheap' END, CASE WHEN i % 5 = 0 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END,
       CASE WHEN i % 20 = 1 THEN 'failed' WHEN i % 20 = 2 THEN 'handoff' WHEN i % 20 = 3 THEN 'degraded'
            WHEN i % 50 = 4 THEN 'rejected' WHEN i % 100 = 5 THEN 'budget_exhausted' ELSE 'ok' END,
       CASE WHEN i % 20 = 2 THEN 'handoff' ELSE 'answer' END, 60000, 100000, 8, 120.0,
       1200 + i % 900, 150 + i % 300, 300 + (i * 7919) % 40000, 7,
       {_TS.format(":start + i * :gap")}, {_TS.format(":start + i * :gap + 4")},
       CASE WHEN i % 20 = 2 THEN 'I don''t know: the status page timed out.' || char(10) || 'What I tried: web'
            ELSE 'All fine.' END
FROM seq"""

_STEPS_SQL = _SEQ + f"""
INSERT INTO step (run_id, seq, kind, name, skill, status, attempt, started_at, latency_ms, error_type, args, result)
SELECT r, i % 7, CASE WHEN i % 3 = 0 THEN 'llm' ELSE 'tool' END,
       CASE WHEN i % 3 = 0 THEN 'gpt-4o-mini' ELSE 'tool_' || (r % 6) END,
       CASE WHEN i % 3 = 0 THEN NULL
            ELSE CASE (r + (CASE WHEN r % 4 = 0 THEN i % 2 ELSE 0 END)) % 6
                 WHEN 0 THEN 'web' WHEN 1 THEN 'shell' WHEN 2 THEN 'ledger' WHEN 3 THEN 'reminders'
                 WHEN 4 THEN 'mail' ELSE 'calendar' END END,
       CASE WHEN i % 31 = 0 THEN 'error' ELSE 'ok' END, 0,
       {_TS.format(":start + (r - 1) * :gap + i % 7")}, 20 + i % 900,
       CASE WHEN i % 31 = 0 THEN 'TimeoutError' END, '{{"q": "x"}}', 'short result'
FROM (SELECT i, i * :runs / :n + 1 AS r FROM seq)"""

_SPEND_SQL = _SEQ + f"""
INSERT INTO spend (run_id, step_id, provider, model, status, prompt_tokens, completion_tokens, cached_tokens,
                   reasoning_tokens, reserved_tokens, reserved_micros, cost_micros, price_known, price_source,
                   usage_json, day, created_at, settled_at)
SELECT r, NULL, 'openai', CASE i % 3 WHEN 0 THEN 'gpt-4o-mini' WHEN 1 THEN 'gpt-4o' ELSE 'o3-mini' END,
       CASE WHEN i % 400 = 7 THEN 'released' ELSE 'settled' END, 1200, 200, 0, 0, 3000, 30000,
       200 + (i * 7919) % 20000, 1, 'genai-prices', NULL,
       date(:start + (r - 1) * :gap, 'unixepoch'), {_TS.format(":start + (r - 1) * :gap + 1")},
       {_TS.format(":start + (r - 1) * :gap + 2")}
FROM (SELECT i, i * :runs / :n + 1 AS r FROM seq)"""

_FAILURE_SQL = _SEQ + f"""
INSERT INTO failure (run_id, step_id, component, error_type, message, handling, created_at)
SELECT r, NULL, CASE i % 4 WHEN 0 THEN 'llm' WHEN 1 THEN 'tool' WHEN 2 THEN 'connector' ELSE 'telegram' END,
       CASE i % 3 WHEN 0 THEN 'RateLimitError' WHEN 1 THEN 'TimeoutError' ELSE 'ConnectorDown' END,
       'synthetic failure kind ' || (i % 7), CASE WHEN i % 2 = 0 THEN 'retried' ELSE 'fell_back' END,
       {_TS.format(":start + (r - 1) * :gap + 3")}
FROM (SELECT i, i * :runs / :n + 1 AS r FROM seq)"""


def generate(path: Path, scale: float, end: dt.datetime) -> dict[str, int]:
    """Write the synthetic year into the (migrated) database at `path`; returns the row counts."""
    counts = {"run": max(10, round(RUNS * scale)), "step": max(60, round(STEPS * scale)),
              "spend": max(20, round(SPENDS * scale)), "failure": max(5, round(FAILURES * scale))}
    start = int(end.timestamp()) - DAYS * 86_400
    params = {"start": start, "gap": DAYS * 86_400 / counts["run"], "runs": counts["run"]}
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=OFF")  # a generator, not the app: durability is not the point here
        with connection:
            for table_name, sql in (("run", _RUNS_SQL), ("step", _STEPS_SQL), ("spend", _SPEND_SQL),
                                    ("failure", _FAILURE_SQL)):
                connection.execute(sql, {**params, "n": counts[table_name]})
        connection.execute("ANALYZE")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return counts


def _timed(func: Callable[[], Any], repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        timings.append(time.perf_counter() - started)
    return timings


def time_run_writes(ledger: Ledger, samples: int) -> list[float]:
    """Record `samples` runs of five steps each through the recording API; seconds per run."""
    def one() -> None:
        run_id = ledger.start_run(Run(trigger="message", channel="telegram", chat_id=1001, request="bench"))
        for seq in range(5):
            ledger.add_step(Step(run_id=run_id, seq=seq, kind="tool", name="probe", skill="web", status="ok",
                                 args='{"q": "x"}', result="ok"))
        ledger.finish_run(run_id, "ok", stop_reason="answer", final_text="done")

    return _timed(one, samples)


def _service(folder: Path, db: Path) -> DigestService:
    settings = Settings(_env_file=None, data_dir=folder, database_path=db, owner_ids=[1001])  # type: ignore[call-arg]
    aria = Aria.build(settings)
    return DigestService(aria, Outbox(aria.ledger))


def _digest_timings(service: DigestService, day: dt.date, repeats: int, *,
                    with_cost: bool = False) -> dict[str, list[float]]:
    ledger, tz = service.ledger, service.tz

    def queries() -> None:
        load_digest(ledger, day, tz, day_cap=service.day_cap, month_cap=service.month_cap)

    def composed() -> None:
        asyncio.run(service.compose(day))

    def cost(days: int) -> Callable[[], None]:
        def report() -> None:
            asyncio.run(service.cost(days))

        return report

    first = _timed(composed, 1)  # includes importing matplotlib
    timings = {"first": first, "queries": _timed(queries, repeats), "digest": _timed(composed, repeats)}
    if with_cost:
        timings.update({"cost 7": _timed(cost(7), repeats), "cost 90": _timed(cost(90), repeats)})
    return timings


def measure(scale: float, folder: Path) -> list[tuple[str, str]]:
    """Build the year, time it, and return the table rows."""
    db = folder / "year.db"
    ledger = Ledger.open(db)  # migrates: the real schema and indexes
    started = time.perf_counter()
    counts = generate(db, scale, dt.datetime.now(dt.UTC))
    generated = time.perf_counter() - started
    size = db.stat().st_size
    writes = time_run_writes(ledger, 200 if scale >= 0.1 else 20)
    service = _service(folder, db)
    yesterday = service.today() - dt.timedelta(days=1)
    repeats = REPEATS if scale >= 0.1 else 1  # a smoke run proves the script works, not the figures
    year = _digest_timings(service, yesterday, repeats, with_cost=True)
    light = folder / "light"
    Ledger.open(light / "light.db").engine.dispose()
    generate(light / "light.db", BASELINE_SCALE, dt.datetime.now(dt.UTC))
    baseline = _digest_timings(_service(light, light / "light.db"), yesterday, repeats)
    digest = median(year["digest"])
    return [
        ("scale", f"{scale:g}"),
        ("rows", ", ".join(f"{name} {n:,}" for name, n in counts.items())),
        ("database size", f"{size / 1e6:,.1f} MB"),
        ("generation time", f"{generated:.1f} s"),
        ("write one run + 5 steps, median", ms(median(writes))),
        ("write one run + 5 steps, p99", ms(percentile(writes, 0.99))),
        ("digest queries (one day), median", ms(median(year["queries"]))),
        ("digest queries, light year (baseline)", ms(median(baseline["queries"]))),
        ("digest with both charts, median", ms(digest)),
        ("digest with both charts, light year (baseline)", ms(median(baseline["digest"]))),
        ("first digest of the process (imports matplotlib)", ms(year["first"][0])),
        ("/cost 7 days (figures + chart), median", ms(median(year["cost 7"]))),
        ("/cost 90 days (figures + chart), median", ms(median(year["cost 90"]))),
        (f"digest with charts ≤ {TARGET_DIGEST_SECONDS:g} s", verdict(digest, TARGET_DIGEST_SECONDS)),
    ]


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of a heavy year to generate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aria-bench-") as folder:
        result = table(measure(args.scale, Path(folder)))
    print(result)
    return result


if __name__ == "__main__":
    main()
