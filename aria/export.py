"""`/export [days]`: the ledger's runs, spend and failures of the last days as three CSV documents.

Times are UTC (ISO 8601), money is US dollars with six decimals (the ledger's micro-dollars, exactly). A cell that a
spreadsheet would read as a formula (=, +, -, @ first) gets a leading apostrophe: requests and error texts can
carry someone else's words, and a CSV opened in a spreadsheet must not run them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from aria.ledger import Failure, Run, Spend, as_utc
from aria.ledger.reports import format_usd, local_day_bounds

if TYPE_CHECKING:
    from aria.app import Aria

DEFAULT_DAYS = 7
MAX_DAYS = 366
USAGE = f"Usage: /export [days], 1 to {MAX_DAYS} (default {DEFAULT_DAYS})"
RUN_COLUMNS = ("id", "started_at", "ended_at", "channel", "trigger", "status", "stop_reason", "route", "model",
               "cost_usd", "prompt_tokens", "completion_tokens", "steps", "cap_usd", "request")
SPEND_COLUMNS = ("id", "run_id", "day", "created_at", "provider", "model", "status", "prompt_tokens",
                 "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd", "reserved_usd", "price_known",
                 "price_source")
FAILURE_COLUMNS = ("id", "run_id", "created_at", "component", "error_type", "handling", "message")


@dataclass(frozen=True)
class ExportFile:
    """One CSV document."""

    name: str
    data: bytes
    rows: int
    caption: str


def parse_days(args: list[str]) -> int | None:
    """The number of days asked for, or None when the argument is not one."""
    if not args:
        return DEFAULT_DAYS
    raw = args[0]
    if len(args) > 1 or not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_DAYS:
        return None
    return int(raw)


def export_files(aria: Aria, days: int) -> list[ExportFile]:
    """Runs, spend and failures of the last `days` local days (today included), one CSV each."""
    tz = aria.settings.tz
    last = aria.ledger.now().astimezone(tz).date()
    first = last - dt.timedelta(days=days - 1)
    start, _ = local_day_bounds(first, tz)
    _, end = local_day_bounds(last, tz)
    span = f"{first:%Y-%m-%d}_{last:%Y-%m-%d}"
    with aria.ledger.read() as s:
        runs = s.exec(select(Run).where(col(Run.started_at) >= start, col(Run.started_at) < end)
                      .order_by(col(Run.id))).all()
        spend = s.exec(select(Spend).where(col(Spend.day) >= first.isoformat(), col(Spend.day) <= last.isoformat())
                       .order_by(col(Spend.id))).all()
        failures = s.exec(select(Failure).where(col(Failure.created_at) >= start, col(Failure.created_at) < end)
                          .order_by(col(Failure.id))).all()
    period = f"{first:%a %d %b} to {last:%a %d %b %Y} ({days} day{'s' if days != 1 else ''}, times in UTC)"
    files = [
        _csv(f"aria-runs-{span}.csv", RUN_COLUMNS, [_run_row(r) for r in runs], f"Runs, {period}"),
        _csv(f"aria-spend-{span}.csv", SPEND_COLUMNS, [_spend_row(r) for r in spend], f"Spend, {period}",
             sum(_counted(r) for r in spend)),
        _csv(f"aria-failures-{span}.csv", FAILURE_COLUMNS, [_failure_row(r) for r in failures],
             f"Failures, {period}"),
    ]
    return files


def _csv(name: str, columns: tuple[str, ...], rows: list[list[Any]], title: str,
         total_micros: int | None = None) -> ExportFile:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([[_cell(value) for value in row] for row in rows])
    money = f", {format_usd(total_micros)}" if total_micros is not None else ""
    caption = f"{title}: {len(rows)} row{'s' if len(rows) != 1 else ''}{money}"
    # UTF-8 with a byte-order mark: spreadsheets then read non-ASCII requests correctly.
    return ExportFile(name, buffer.getvalue().encode("utf-8-sig"), len(rows), caption)


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return as_utc(value).isoformat(timespec="seconds")
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _usd(micros: int) -> str:
    return f"{micros / 1_000_000:.6f}"


def _run_row(run: Run) -> list[Any]:
    return [run.id, run.started_at, run.ended_at, run.channel, run.trigger, run.status, run.stop_reason, run.route,
            run.model, _usd(run.cost_micros), run.prompt_tokens, run.completion_tokens, run.steps,
            _usd(run.cap_micros), run.request]


def _counted(row: Spend) -> int:
    # As every report counts it: an open reservation its worst case, a settled call its cost, a release nothing.
    return row.cost_micros if row.status == "settled" else row.reserved_micros if row.status == "reserved" else 0


def _spend_row(row: Spend) -> list[Any]:
    cost = _counted(row)
    return [row.id, row.run_id, row.day, row.created_at, row.provider, row.model, row.status, row.prompt_tokens,
            row.completion_tokens, row.cached_tokens, row.reasoning_tokens, _usd(cost), _usd(row.reserved_micros),
            row.price_known, row.price_source]


def _failure_row(row: Failure) -> list[Any]:
    return [row.id, row.run_id, row.created_at, row.component, row.error_type, row.handling, row.message]
