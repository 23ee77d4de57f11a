"""Ledger: what Aria spent, what failed, and what a run tried, read from its own records."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from aria.errors import ToolError
from aria.ledger import reports
from aria.ledger.models import usd_to_micros
from aria.skills import ToolContext, tool

KEYWORDS = (
    "spend", "spent", "cost", "costs", "budget", "money", "dollars", "usd", "price", "tokens", "failures",
    "failed", "errors", "error", "try", "tried", "trace", "run", "runs", "today", "yesterday", "week", "month",
    "ledger", "why", "happened",
)
Period = Literal["today", "yesterday", "last_7_days", "month_to_date"]
MAX_LINES = 31  # spend lines shown; the rest are folded into one
MAX_STEPS = 30  # steps of a trace shown; a long run shows its first and last ones
TEXT = 200  # characters of a request, message or answer shown
RESULT = 120  # characters of a step's result shown


class SpendItem(BaseModel):
    """Spend under one model, skill or day."""

    key: str
    cost: str
    calls: int
    tokens_in: int
    tokens_out: int


class SpendReport(BaseModel):
    """Spend over a period of the owner's local days."""

    period: str
    first: str
    last: str
    total: str
    calls: int
    day_cap: str
    lines: list[SpendItem]


class FailureItem(BaseModel):
    """One failure."""

    id: int
    when: str
    run_id: int | None
    component: str
    error: str
    message: str
    handling: str


class FailureReport(BaseModel):
    """The latest failures, newest first."""

    failures: list[FailureItem]


class TraceStep(BaseModel):
    """One step of a run."""

    seq: int
    kind: str
    name: str
    status: str
    ms: int
    error: str | None = None
    result: str | None = None


class TraceReport(BaseModel):
    """What a run tried and how it ended."""

    run_id: int
    status: str
    stop_reason: str | None
    started: str
    seconds: float | None
    request: str
    model: str | None
    cost: str
    steps: list[TraceStep]
    steps_omitted: int = 0
    failures: list[FailureItem]
    answer: str | None


def period_days(period: Period, today: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last local day of a named period ending today."""
    if period == "today":
        return today, today
    if period == "yesterday":
        day = today - dt.timedelta(days=1)
        return day, day
    if period == "last_7_days":
        return today - dt.timedelta(days=6), today
    return today.replace(day=1), today


def _local(when: dt.datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _fold(lines: list[reports.SpendLine]) -> list[SpendItem]:
    # A long tail would cost tokens without changing the answer; keep the biggest lines and one "other".
    shown, rest = lines[:MAX_LINES], lines[MAX_LINES:]
    items = [SpendItem(key=x.key, cost=reports.format_usd(x.cost_micros), calls=x.calls,
                       tokens_in=x.prompt_tokens, tokens_out=x.completion_tokens) for x in shown]
    if rest:
        items.append(SpendItem(
            key=f"{len(rest)} other", cost=reports.format_usd(sum(x.cost_micros for x in rest)),
            calls=sum(x.calls for x in rest), tokens_in=sum(x.prompt_tokens for x in rest),
            tokens_out=sum(x.completion_tokens for x in rest),
        ))
    return items


@tool(timeout=10.0, keywords=("spend", "spent", "cost", "budget", "money"))
def spend_report(ctx: ToolContext, period: Period = "today",
                 by: Literal["model", "skill", "day"] = "model") -> SpendReport:
    """Aria's own LLM spend over a period of the owner's local days, grouped by model, skill or day."""
    today = ctx.clock.now().astimezone(ctx.settings.tz).date()
    first, last = period_days(period, today)
    lines = reports.spend_summary(ctx.ledger, first, last, by)
    return SpendReport(
        period=period, first=first.isoformat(), last=last.isoformat(),
        total=reports.format_usd(sum(x.cost_micros for x in lines)), calls=sum(x.calls for x in lines),
        day_cap=reports.format_usd(usd_to_micros(ctx.settings.day_max_usd)), lines=_fold(lines),
    )


def _failure_item(line: reports.FailureLine, tz: ZoneInfo) -> FailureItem:
    return FailureItem(id=line.id, when=_local(line.created_at, tz), run_id=line.run_id,
                       component=line.component, error=line.error_type, message=_clip(line.message, TEXT) or "",
                       handling=line.handling)


@tool(timeout=10.0, keywords=("failures", "failed", "errors", "wrong"))
def failure_report(ctx: ToolContext, limit: Annotated[int, Field(ge=1, le=20)] = 5) -> FailureReport:
    """The latest recorded failures (any chat), newest first, with how each was handled."""
    lines = reports.recent_failures(ctx.ledger, limit=limit)
    return FailureReport(failures=[_failure_item(x, ctx.settings.tz) for x in lines])


def _trace_steps(steps: list[reports.StepLine]) -> tuple[list[TraceStep], int]:
    if len(steps) > MAX_STEPS:
        # The start shows the plan, the end shows why it stopped; the middle is usually repetition.
        half = MAX_STEPS // 2
        kept, omitted = steps[:half] + steps[-half:], len(steps) - MAX_STEPS
    else:
        kept, omitted = steps, 0
    shown = [TraceStep(seq=s.seq, kind=s.kind, name=s.name, status=s.status, ms=s.latency_ms,
                       error=s.error_type, result=_clip(s.result, RESULT)) for s in kept]
    return shown, omitted


@tool(timeout=10.0, keywords=("trace", "tried", "run", "why", "happened"))
def run_trace(ctx: ToolContext, run_id: int | None = None) -> TraceReport:
    """What a run tried, step by step, and how it ended. Without run_id: the last finished run in this chat."""
    if run_id is None:
        previous = reports.last_runs(ctx.ledger, 1, ctx.chat_id, finished_only=True, exclude_run_id=ctx.run_id)
        if not previous:
            raise ToolError("no earlier finished run in this chat")
        run_id = previous[0].id
    trace = reports.run_trace(ctx.ledger, run_id)
    if trace is None:
        raise ToolError(f"no run {run_id} in the ledger")
    run, tz = trace.run, ctx.settings.tz
    steps, omitted = _trace_steps(trace.steps)
    seconds = round((run.ended_at - run.started_at).total_seconds(), 1) if run.ended_at else None
    return TraceReport(
        run_id=run.id, status=run.status, stop_reason=run.stop_reason, started=_local(run.started_at, tz),
        seconds=seconds, request=_clip(run.request, TEXT) or "", model=run.model,
        cost=reports.format_usd(trace.spend_micros), steps=steps, steps_omitted=omitted,
        failures=[_failure_item(f, tz) for f in trace.failures], answer=_clip(run.final_text, TEXT),
    )
