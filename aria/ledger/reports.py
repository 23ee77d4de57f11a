"""Read-only report queries over the ledger: spend, failures, runs and run traces.

Used by the `ledger` skill and the daily digest. Aggregation happens in SQL on indexed columns (spend.day,
spend.run_id, run.started_at, failure.created_at, step.run_id), so a report over a year of heavy use reads
only the rows it sums. Results are small frozen dataclasses; money is integer micro-dollars until `format_usd`.

Which spend rows count: a `settled` row counts its reported cost, a `reserved` row (a call in flight, or one whose
process died before settling) its reservation, a `released` row nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, and_, case, func
from sqlalchemy import select as core_select
from sqlmodel import col, select

from aria.ledger.models import COUNTED_MICROS, IS_COUNTED, MICROS, Failure, Run, Spend, Step
from aria.ledger.recorder import Ledger

SpendGrouping = Literal["model", "skill", "day"]
CHAT = "chat"  # the skill key of spend in runs that called no tool



@dataclass(frozen=True, slots=True)
class DaySpend:
    """Spend on one of the owner's local days."""

    day: dt.date
    cost_micros: int
    calls: int


@dataclass(frozen=True, slots=True)
class SpendLine:
    """Spend under one key (a model, a skill or an ISO day)."""

    key: str
    cost_micros: int
    calls: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class FailureLine:
    """One recorded failure and how it was handled."""

    id: int
    run_id: int | None
    component: str
    error_type: str
    message: str
    handling: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RunLine:
    """A run's outcome, without its steps."""

    id: int
    trigger: str
    channel: str
    chat_id: int | None
    status: str
    stop_reason: str | None
    request: str
    model: str | None
    started_at: dt.datetime
    ended_at: dt.datetime | None
    steps: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    final_text: str | None


@dataclass(frozen=True, slots=True)
class StepLine:
    """One step of a run trace."""

    seq: int
    kind: str
    name: str
    skill: str | None
    status: str
    attempt: int
    latency_ms: int
    error_type: str | None
    args: str | None
    result: str | None


@dataclass(frozen=True, slots=True)
class RunTrace:
    """Everything a run tried: the run, its steps in order, its failures and what it cost."""

    run: RunLine
    steps: list[StepLine]
    failures: list[FailureLine]
    spend_micros: int
    spend_calls: int


def local_day_bounds(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """The owner-local day as a half-open UTC range [start, end); DST days are 23 or 25 hours long."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def format_usd(micros: int) -> str:
    """Micro-dollars as text: "$0.0123" below a dollar, "$12.35" from a dollar up."""
    if micros == 0:
        return "$0.00"
    sign = "-" if micros < 0 else ""
    amount = Decimal(abs(micros)) / MICROS
    if amount < Decimal("0.0001"):
        return f"{sign}<$0.0001"  # 4 decimals would round a real cost to zero
    places = Decimal("0.01") if amount >= 1 else Decimal("0.0001")
    return f"{sign}${amount.quantize(places, rounding=ROUND_HALF_UP):,}"


# spend ----------------------------------------------------------------------------------------------------

def _in_days(first: dt.date, last: dt.date) -> ColumnElement[bool]:
    # ISO dates sort as text, so BETWEEN on spend.day uses its index.
    return col(Spend.day).between(first.isoformat(), last.isoformat())


def spend_by_day(ledger: Ledger, first: dt.date, last: dt.date) -> list[DaySpend]:
    """Spend per local day from `first` to `last` inclusive; days without spend are present with zeros."""
    query = (
        select(col(Spend.day), func.sum(COUNTED_MICROS), func.count())
        .where(_in_days(first, last), IS_COUNTED)
        .group_by(col(Spend.day))
    )
    with ledger.read() as session:
        found = {day: (int(cost), int(calls)) for day, cost, calls in session.exec(query)}
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    return [DaySpend(day, *found.get(day.isoformat(), (0, 0))) for day in days]


def spend_summary(ledger: Ledger, first: dt.date, last: dt.date, by: SpendGrouping) -> list[SpendLine]:
    """Spend from `first` to `last` (local days, inclusive) grouped by model, skill or day.

    Models and skills come most expensive first, days in date order. A run that used several skills has its spend,
    calls and tokens split evenly between them, in whole units, so the lines always add up to the total.
    """
    if by == "skill":
        query = _by_skill(first, last)
    else:
        key = col(Spend.model) if by == "model" else col(Spend.day)
        totals = _totals(key)
        order = [key] if by == "day" else [totals[1].desc(), key]
        query = core_select(*totals).where(_in_days(first, last), IS_COUNTED).group_by(key).order_by(*order)
    # Five columns are more than SQLModel's select() types: these aggregates are plain Core queries.
    with ledger.read_conn() as conn:
        rows = conn.execute(query).all()
    return [SpendLine(str(k), int(c), int(n), int(p or 0), int(o or 0)) for k, c, n, p, o in rows]


def _totals(key: Any) -> tuple[Any, ...]:
    return (key.label("key"), func.sum(COUNTED_MICROS).label("cost"), func.count().label("calls"),
            func.sum(col(Spend.prompt_tokens)).label("prompt"),
            func.sum(col(Spend.completion_tokens)).label("completion"))


def _by_skill(first: dt.date, last: dt.date) -> Select[Any]:
    per_run = (
        core_select(col(Spend.run_id).label("run_id"), *_totals(col(Spend.run_id))[1:])
        .where(_in_days(first, last), IS_COUNTED)
        .group_by(col(Spend.run_id))
        .cte("run_spend")
    )
    # One row per (run, skill), or (run, NULL) for a run without tool steps. Joining step itself (not a derived
    # table) lets SQLite look steps up through ix_step_run_id instead of scanning a temporary table per run.
    is_tool = and_(col(Step.run_id) == per_run.c.run_id, col(Step.kind) == "tool", col(Step.skill).is_not(None))
    pairs = (
        core_select(*per_run.c, col(Step.skill).label("skill"))
        .select_from(per_run.outerjoin(Step, is_tool))
        .distinct()
        .subquery()
    )
    ranked = core_select(
        *pairs.c,
        func.row_number().over(partition_by=pairs.c.run_id, order_by=pairs.c.skill).label("rank"),
        func.count().over(partition_by=pairs.c.run_id).label("n"),
    ).subquery()

    def share(total: Any) -> Any:
        # An even integer split whose remainder units go to `total % n` of the skills, so the shares sum to the
        # total; which skills get them rotates with the run id, so no skill is favoured by its name.
        turn = (ranked.c.rank - 1 + ranked.c.run_id) % ranked.c.n
        return func.sum(total // ranked.c.n + case((turn < total % ranked.c.n, 1), else_=0))

    key = func.coalesce(ranked.c.skill, CHAT).label("key")
    cost = share(ranked.c.cost)
    return (
        core_select(key, cost, share(ranked.c.calls), share(ranked.c.prompt), share(ranked.c.completion))
        .group_by(key)
        .order_by(cost.desc(), key)
    )


# failures and runs ----------------------------------------------------------------------------------------

def _failure_line(row: Failure) -> FailureLine:
    assert row.id is not None
    return FailureLine(row.id, row.run_id, row.component, row.error_type, row.message, row.handling,
                       row.created_at)


def _run_line(row: Run) -> RunLine:
    assert row.id is not None
    return RunLine(
        id=row.id, trigger=row.trigger, channel=row.channel, chat_id=row.chat_id, status=row.status,
        stop_reason=row.stop_reason, request=row.request, model=row.model, started_at=row.started_at,
        ended_at=row.ended_at, steps=row.steps, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, cost_micros=row.cost_micros, final_text=row.final_text,
    )


def recent_failures(ledger: Ledger, limit: int = 10, since: dt.datetime | None = None) -> list[FailureLine]:
    """The latest failures, newest first, optionally only those at or after `since`."""
    query = select(Failure).order_by(col(Failure.created_at).desc(), col(Failure.id).desc()).limit(limit)
    if since is not None:
        query = query.where(col(Failure.created_at) >= since)
    with ledger.read() as session:
        return [_failure_line(row) for row in session.exec(query)]


def last_runs(ledger: Ledger, limit: int = 5, chat_id: int | None = None, *, finished_only: bool = False,
              exclude_run_id: int | None = None) -> list[RunLine]:
    """The latest runs, newest first; optionally of one chat, only finished ones, or all but one run."""
    query = select(Run).order_by(col(Run.started_at).desc(), col(Run.id).desc()).limit(limit)
    if chat_id is not None:
        query = query.where(col(Run.chat_id) == chat_id)
    if finished_only:
        query = query.where(col(Run.status) != "running")
    if exclude_run_id is not None:
        query = query.where(col(Run.id) != exclude_run_id)
    with ledger.read() as session:
        return [_run_line(row) for row in session.exec(query)]


def run_trace(ledger: Ledger, run_id: int) -> RunTrace | None:
    """A run with its steps in order, its failures and its spend, or None if there is no such run."""
    with ledger.read() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        steps = session.exec(
            select(Step).where(col(Step.run_id) == run_id).order_by(col(Step.seq), col(Step.id))
        ).all()
        failures = session.exec(
            select(Failure).where(col(Failure.run_id) == run_id).order_by(col(Failure.created_at), col(Failure.id))
        ).all()
        cost, calls = session.exec(
            select(func.coalesce(func.sum(COUNTED_MICROS), 0), func.count())
            .where(col(Spend.run_id) == run_id, IS_COUNTED)
        ).one()
    return RunTrace(
        run=_run_line(run),
        steps=[StepLine(s.seq, s.kind, s.name, s.skill, s.status, s.attempt, s.latency_ms, s.error_type,
                        s.args, s.result) for s in steps],
        failures=[_failure_line(f) for f in failures],
        spend_micros=int(cost),
        spend_calls=int(calls),
    )


def runs_by_outcome(ledger: Ledger, first: dt.date, last: dt.date, tz: ZoneInfo) -> dict[str, int]:
    """How many runs started on the local days `first`..`last` ended in each status."""
    start, _ = local_day_bounds(first, tz)
    _, end = local_day_bounds(last, tz)
    query = (
        select(col(Run.status), func.count())
        .where(col(Run.started_at) >= start, col(Run.started_at) < end,
               func.coalesce(col(Run.stop_reason), "") != "nothing_due")  # jobs that found nothing to do
        .group_by(col(Run.status))
    )
    with ledger.read() as session:
        return {status: int(count) for status, count in session.exec(query)}
