"""`/trace [run id]`: a run's timeline from the ledger. Each model call (model, tokens, cost, latency, outcome), each
tool call (its arguments as recorded, i.e. redacted, and its outcome), guard checks, approvals, failures, and how
the run ended. Default: the chat's last run."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlmodel import col, select

from aria.ledger import Approval, Failure, Run, Spend, Step, as_utc
from aria.ledger.reports import format_usd
from aria.sanitize import shorten

if TYPE_CHECKING:
    from aria.app import Aria

ARGS_CHARS = 160
RESULT_CHARS = 120
MAX_STEPS = 40  # a phone screen's worth; the rest is summed up
USAGE = "Usage: /trace [run id] (default: your last run)"


def trace_command(aria: Aria, args: list[str], chat_id: int | None) -> str:
    """The answer to `/trace` and `/trace <run id>`."""
    if len(args) > 1:
        return USAGE
    if args:
        raw = args[0].lstrip("#")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            return USAGE
        run = aria.ledger.run(int(raw))
        if run is None:
            return f"There is no run {raw}."
    else:
        found = last_run(aria, chat_id)
        if found is None:
            return "No runs yet: ask me something first."
        run = found
    return trace_text(aria, run)


def last_run(aria: Aria, chat_id: int | None) -> Run | None:
    """The chat's latest run (the scheduler's own jobs left out), else the latest owner run anywhere."""
    with aria.ledger.read() as s:
        query = select(Run).where(col(Run.channel) != "scheduler").order_by(col(Run.id).desc()).limit(1)
        if chat_id is not None:
            mine = s.exec(query.where(col(Run.chat_id) == chat_id)).first()
            if mine is not None:
                return mine
        return s.exec(query).first()


def trace_text(aria: Aria, run: Run) -> str:
    """The timeline of one run."""
    assert run.id is not None
    tz = aria.settings.tz
    with aria.ledger.read() as s:
        steps = list(s.exec(select(Step).where(col(Step.run_id) == run.id).order_by(col(Step.seq), col(Step.id))))
        spends = {row.step_id: row for row in s.exec(select(Spend).where(col(Spend.run_id) == run.id))
                  if row.step_id is not None}
        approvals = list(s.exec(select(Approval).where(col(Approval.run_id) == run.id).order_by(col(Approval.id))))
        failures = list(s.exec(select(Failure).where(col(Failure.run_id) == run.id).order_by(col(Failure.id))))
    start = as_utc(run.started_at)
    head = (f"Run {run.id} · {run.channel} {run.trigger} · {start.astimezone(tz):%Y-%m-%d %H:%M:%S} "
            f"· route {run.route or 'n/a'}")
    lines = [head, f"Asked: «{shorten(run.request, 200)}»",
             f"Caps: {format_usd(run.cap_micros)}, {run.cap_steps} model calls, {run.cap_seconds:g} s, "
             f"{run.cap_tokens:,} tokens"]
    calls = 0
    for index, step in enumerate(steps):
        if step.kind == "llm":
            calls += step.status == "ok"
        if index < MAX_STEPS:
            lines.append(_step_line(step, spends.get(step.id or 0), start))
    if len(steps) > MAX_STEPS:
        lines.append(f"… {len(steps) - MAX_STEPS} more steps (all in /export)")
    for approval in approvals:
        decided = (f", decided {as_utc(approval.decided_at).astimezone(tz):%H:%M:%S}" if approval.decided_at
                   else "")
        lines.append(f"approval {approval.id}: {shorten(approval.summary, 120)} → {approval.status}{decided}"
                     + (f" ({shorten(approval.result, 80)})" if approval.result else ""))
    for failure in failures:
        lines.append(f"failure [{failure.component}] {failure.error_type}: {shorten(failure.message, 120)} → "
                     f"{failure.handling}")
    lines.append(_end_line(run, calls, start))
    if run.final_text and run.status not in ("ok", "running"):
        lines.append(f"Said: {shorten(run.final_text.splitlines()[0], 200)}")
    return "\n".join(lines)


def _step_line(step: Step, spend: Spend | None, start: dt.datetime) -> str:
    offset = (as_utc(step.started_at) - start).total_seconds()
    when = f"+{offset:.1f}s"
    outcome = step.status + (f" ({step.error_type})" if step.error_type else "")
    if step.kind == "llm":
        retry = f" retry {step.attempt}" if step.attempt else ""
        money = ""
        if spend is not None:
            money = (f" {spend.prompt_tokens:,}+{spend.completion_tokens:,} tokens, "
                     f"{format_usd(spend.cost_micros)}{'' if spend.price_known else ' (estimated)'},")
        return f"{when} model {step.name}{retry}:{money} {step.latency_ms} ms, {outcome}"
    args = f" {shorten(step.args, ARGS_CHARS)}" if step.args else ""
    result = f": {shorten(step.result, RESULT_CHARS)}" if step.result else ""
    kind = "tool" if step.kind == "tool" else "check"
    return f"{when} {kind} {step.name}{args} → {outcome}{result}" + (
        f" ({step.latency_ms} ms)" if step.kind == "tool" else "")


def _end_line(run: Run, calls: int, start: dt.datetime) -> str:
    if run.ended_at is None:
        return f"Still {run.status}; {calls} model calls so far, {format_usd(run.cost_micros)}."
    took = (as_utc(run.ended_at) - start).total_seconds()
    return (f"End: {run.status} (stop: {run.stop_reason or 'n/a'}) after {took:.1f} s; {calls} model "
            f"call{'s' if calls != 1 else ''}, {run.prompt_tokens:,}+{run.completion_tokens:,} tokens, "
            f"{format_usd(run.cost_micros)}" + (f", last model {run.model}" if run.model else ""))
