"""The digest's queries, aggregated in SQL on indexed columns and returned as small typed values.

Windows are the owner's local days (`spend.day` for money, `local_day_bounds` on `run.started_at` and
`failure.created_at` for everything else), so a digest over a year of heavy use reads only the rows it reports on.
Runs the scheduler records for its own jobs (channel `scheduler`) are counted apart from the work runs. Money stays
integer micro-dollars; formatting happens in `text.py`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from aria.ledger import COUNTED_MICROS, IS_COUNTED, Event, Failure, Ledger, Run, Spend, Step
from aria.ledger.reports import CHAT, SpendLine, local_day_bounds, spend_summary
from aria.scheduler import NOTHING_DUE

if TYPE_CHECKING:
    from aria.app import Aria

SCHEDULER = "scheduler"  # the channel of the scheduler's own job runs
# A job that found nothing to do (a start-up catch-up that missed nothing) is recorded but never counted.
NOT_NOOP = func.coalesce(col(Run.stop_reason), "") != NOTHING_DUE
CHART_DAYS = 14
TOP_MODELS = 5  # models stacked by name in a chart; the rest are "other"
# Chart outcome buckets: every run status lands in one.
OUTCOMES = ("ok", "degraded", "handoff", "rejected", "failed", "other")
_BUCKET = {"ok": "ok", "degraded": "degraded", "handoff": "handoff", "budget_exhausted": "handoff",
           "rejected": "rejected", "failed": "failed", "interrupted": "failed"}



@dataclass(frozen=True, slots=True)
class SpendFigures:
    """The headline money figures for a report day, with the budgets they are measured against."""

    day: int
    previous_day: int
    last_7_days: int
    month_to_date: int
    month_forecast: int  # month to date plus the rest of the month at the last 7 days' pace
    day_cap: int
    month_cap: int


@dataclass(frozen=True, slots=True)
class SkillStats:
    """Runs that used a skill on the report day, how many ended ok, and what the skill cost."""

    skill: str
    runs: int
    ok: int
    cost_micros: int

    @property
    def per_success(self) -> int | None:
        """Micro-dollars per successful run (all of the skill's spend, failed runs included), None without one."""
        return self.cost_micros // self.ok if self.ok else None


@dataclass(frozen=True, slots=True)
class CostlyRun:
    """A run and what it cost (in the window asked about), with the skills its tools came from."""

    id: int
    cost_micros: int
    status: str
    request: str
    skills: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failures of one component, with the most frequent reasons first."""

    component: str
    count: int
    reasons: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class HandoffLine:
    """A run that ended by handing off: what was asked and why it stopped."""

    run_id: int
    status: str
    request: str
    reason: str


@dataclass(frozen=True, slots=True)
class Series:
    """Per-day values stacked by key (a model or an outcome), ready to plot."""

    days: tuple[dt.date, ...]
    stacks: dict[str, list[int]]

    @property
    def total(self) -> int:
        """The sum of every value."""
        return sum(sum(values) for values in self.stacks.values())


@dataclass(frozen=True)
class LiveState:
    """How things stand right now, beside the day's figures."""

    pending_approvals: list[tuple[int, str]]  # (id, summary), oldest first
    open_circuits: list[tuple[str, str]]  # (key, state) of circuits that are not closed
    paused: bool
    next_jobs: list[tuple[str, dt.datetime]]
    undelivered: int
    refused: int  # of the undelivered: messages Telegram refused for good
    outbound_calls: dict[str, int] = field(default_factory=dict)  # per connector, today
    events_accepted: int = 0  # signed events received today: checks that needed no polling

    @property
    def notable(self) -> bool:
        """True when something here needs the owner's attention."""
        return bool(self.pending_approvals or self.open_circuits or self.paused or self.undelivered)


@dataclass(frozen=True)
class DigestData:
    """Everything a digest reports about one local day."""

    day: dt.date
    spend: SpendFigures
    by_model: list[SpendLine]
    by_skill: list[SpendLine]
    skills: list[SkillStats]
    costly: list[CostlyRun]
    outcomes: dict[str, int]
    jobs: dict[str, int]
    failures: list[FailureGroup]
    handoffs: list[HandoffLine]
    spend_chart: Series  # micro-dollars per day by model
    runs_chart: Series  # work runs per day by outcome bucket

    @property
    def chartable(self) -> bool:
        """True when the chart window holds spend or work runs; an empty chart is never drawn."""
        return bool(self.spend_chart.total or self.runs_chart.total)

    @property
    def active(self) -> bool:
        """False when there is nothing to report (the scheduler's own job runs don't count as activity)."""
        return self.chartable or bool(self.failures)


@dataclass(frozen=True)
class CostReport:
    """Spend over the `days` local days ending `last` (for /cost)."""

    first: dt.date
    last: dt.date
    spend: SpendFigures  # headline figures for `last`
    total: int
    by_model: list[SpendLine]
    by_skill: list[SpendLine]
    chart: Series


def load_cost(ledger: Ledger, last: dt.date, days: int, *, day_cap: int, month_cap: int) -> CostReport:
    """Spend per day, model and skill over the `days` local days ending `last`."""
    first = last - dt.timedelta(days=days - 1)
    per_day = model_spend_by_day(ledger, min(first, last - dt.timedelta(days=6), last.replace(day=1)), last)
    chart = spend_series(per_day, _days(last, days))
    return CostReport(first=first, last=last, spend=spend_figures(per_day, last, day_cap, month_cap),
                      total=chart.total, by_model=spend_summary(ledger, first, last, "model"),
                      by_skill=spend_summary(ledger, first, last, "skill"), chart=chart)


def load_digest(ledger: Ledger, day: dt.date, tz: ZoneInfo, *, day_cap: int, month_cap: int) -> DigestData:
    """Run every digest query for the local day `day`."""
    start, end = local_day_bounds(day, tz)
    first = min(day - dt.timedelta(days=CHART_DAYS - 1), day.replace(day=1))
    per_day = model_spend_by_day(ledger, first, day)
    by_skill = spend_summary(ledger, day, day, "skill")
    with ledger.read() as session:
        outcomes, jobs = _outcomes(session, start, end)
        data = DigestData(
            day=day, spend=spend_figures(per_day, day, day_cap, month_cap),
            by_model=spend_summary(ledger, day, day, "model"), by_skill=by_skill,
            skills=_skill_stats(session, start, end, {line.key: line.cost_micros for line in by_skill}),
            costly=costly_runs(session, start, end), outcomes=outcomes, jobs=jobs,
            failures=failure_groups(session, start, end), handoffs=_handoffs(session, start, end),
            spend_chart=spend_series(per_day, _days(day, CHART_DAYS)),
            runs_chart=runs_by_day(session, _days(day, CHART_DAYS), tz),
        )
    return data


def _days(last: dt.date, count: int) -> tuple[dt.date, ...]:
    return tuple(last - dt.timedelta(days=n) for n in range(count - 1, -1, -1))


# spend ------------------------------------------------------------------------------------------------------

def model_spend_by_day(ledger: Ledger, first: dt.date, last: dt.date) -> dict[dt.date, dict[str, int]]:
    """Micro-dollars per local day and model, `first` to `last` inclusive (days without spend are absent)."""
    query = (
        select(col(Spend.day), col(Spend.model), func.sum(COUNTED_MICROS))
        .where(col(Spend.day).between(first.isoformat(), last.isoformat()), IS_COUNTED)
        .group_by(col(Spend.day), col(Spend.model))
    )
    found: dict[dt.date, dict[str, int]] = {}
    with ledger.read() as session:
        for day, model, cost in session.exec(query):
            found.setdefault(dt.date.fromisoformat(day), {})[model] = int(cost)
    return found


def spend_figures(per_day: dict[dt.date, dict[str, int]], day: dt.date, day_cap: int, month_cap: int) -> SpendFigures:
    """Day, previous day, 7 days, month to date and a month-end forecast from per-day spend."""
    totals = {d: sum(models.values()) for d, models in per_day.items()}

    def between(first: dt.date, last: dt.date) -> int:
        return sum(cost for d, cost in totals.items() if first <= d <= last)

    week = between(day - dt.timedelta(days=6), day)
    month = between(day.replace(day=1), day)
    days_left = calendar.monthrange(day.year, day.month)[1] - day.day
    return SpendFigures(day=totals.get(day, 0), previous_day=totals.get(day - dt.timedelta(days=1), 0),
                        last_7_days=week, month_to_date=month, month_forecast=month + week * days_left // 7,
                        day_cap=day_cap, month_cap=month_cap)


def spend_series(per_day: dict[dt.date, dict[str, int]], days: tuple[dt.date, ...], top: int = TOP_MODELS) -> Series:
    """Per-day spend stacked by model: the `top` most expensive models by name, the rest as "other"."""
    totals: dict[str, int] = {}
    for d in days:
        for model, cost in per_day.get(d, {}).items():
            totals[model] = totals.get(model, 0) + cost
    ranked = sorted((m for m, cost in totals.items() if cost), key=lambda m: (-totals[m], m))
    named = ranked if len(ranked) <= top else ranked[: top - 1]
    stacks = {model: [per_day.get(d, {}).get(model, 0) for d in days] for model in named}
    rest = [m for m in ranked if m not in stacks]
    if rest:
        stacks["other"] = [sum(per_day.get(d, {}).get(m, 0) for m in rest) for d in days]
    return Series(days, stacks)


def spend_in_windows(ledger: Ledger, windows: list[tuple[dt.datetime, dt.datetime]]) -> list[int]:
    """Micro-dollars of calls made in each [start, end) window (by `spend.created_at`), in one read (each an indexed
    range on `spend.created_at`)."""
    with ledger.read() as session:
        return [int(session.exec(select(func.coalesce(func.sum(COUNTED_MICROS), 0)).where(
            col(Spend.created_at) >= start, col(Spend.created_at) < end, IS_COUNTED)).one()) for start, end in windows]


def median_micros(values: list[int]) -> int:
    """The median of integer amounts, rounded down (0 for none)."""
    return int(statistics.median(values)) if values else 0


# runs -------------------------------------------------------------------------------------------------------

def _in_window(column: Any, start: dt.datetime, end: dt.datetime) -> Any:
    return and_(column >= start, column < end)


def _outcomes(session: Session, start: dt.datetime, end: dt.datetime) -> tuple[dict[str, int], dict[str, int]]:
    is_job = col(Run.channel) == SCHEDULER
    query = (
        select(is_job, col(Run.status), func.count())
        .where(_in_window(col(Run.started_at), start, end), NOT_NOOP)
        .group_by(is_job, col(Run.status))
    )
    work: dict[str, int] = {}
    jobs: dict[str, int] = {}
    for job, status, count in session.exec(query):
        (jobs if job else work)[status] = int(count)
    return work, jobs


def runs_by_day(session: Session, days: tuple[dt.date, ...], tz: ZoneInfo) -> Series:
    """Work runs per local day by outcome bucket, in one pass over the window (DST-aware day edges)."""
    edges = [local_day_bounds(d, tz)[0] for d in days] + [local_day_bounds(days[-1], tz)[1]]
    bucket = case(*[(col(Run.started_at) < edge, index) for index, edge in enumerate(edges[1:])])
    query = (
        select(bucket, col(Run.status), func.count())
        .where(_in_window(col(Run.started_at), edges[0], edges[-1]), col(Run.channel) != SCHEDULER)
        .group_by(bucket, col(Run.status))
    )
    stacks = {outcome: [0] * len(days) for outcome in OUTCOMES}
    for index, status, count in session.exec(query):
        stacks[_BUCKET.get(status, "other")][int(index)] += int(count)
    return Series(days, {outcome: values for outcome, values in stacks.items() if any(values)})


def _skill_stats(session: Session, start: dt.datetime, end: dt.datetime, cost: dict[str, int]) -> list[SkillStats]:
    runs = (
        select(col(Run.id).label("id"), col(Run.status).label("status"))
        .where(_in_window(col(Run.started_at), start, end), col(Run.channel) != SCHEDULER)
        .cte("day_runs")
    )
    is_tool = and_(col(Step.run_id) == runs.c.id, col(Step.kind) == "tool", col(Step.skill).is_not(None))
    pairs = (
        select(runs.c.id, runs.c.status, col(Step.skill).label("skill"))
        .select_from(runs.outerjoin(Step, is_tool))
        .distinct()
        .subquery()
    )
    key = func.coalesce(pairs.c.skill, CHAT)
    query = select(key, func.count(), func.sum(case((pairs.c.status == "ok", 1), else_=0))).group_by(key)
    stats = [SkillStats(str(skill), int(n), int(ok or 0), cost.get(str(skill), 0))
             for skill, n, ok in session.exec(query)]
    return sorted(stats, key=lambda s: (-s.cost_micros, -s.runs, s.skill))


def run_skills(session: Session, run_ids: list[int]) -> dict[int, tuple[str, ...]]:
    """The skills whose tools each run called, by name."""
    if not run_ids:
        return {}
    query = (
        select(col(Step.run_id), col(Step.skill))
        .where(col(Step.run_id).in_(run_ids), col(Step.kind) == "tool", col(Step.skill).is_not(None))
        .distinct()
        .order_by(col(Step.run_id), col(Step.skill))
    )
    found: dict[int, list[str]] = {}
    for run_id, skill in session.exec(query):
        found.setdefault(int(run_id), []).append(str(skill))
    return {run_id: tuple(skills) for run_id, skills in found.items()}


def costly_runs(session: Session, start: dt.datetime, end: dt.datetime, limit: int = 3) -> list[CostlyRun]:
    """The most expensive work runs started in [start, end), by their recorded cost."""
    rows = session.exec(
        select(col(Run.id), col(Run.cost_micros), col(Run.status), col(Run.request))
        .where(_in_window(col(Run.started_at), start, end), col(Run.channel) != SCHEDULER, col(Run.cost_micros) > 0)
        .order_by(col(Run.cost_micros).desc(), col(Run.id))
        .limit(limit)
    ).all()
    skills = run_skills(session, [_id(r[0]) for r in rows])
    return [CostlyRun(_id(i), int(c), s, q, skills.get(_id(i), ())) for i, c, s, q in rows]


def runs_behind(ledger: Ledger, start: dt.datetime, end: dt.datetime, limit: int = 3) -> list[CostlyRun]:
    """The runs whose calls in [start, end) cost the most, with what those calls cost."""
    cost = func.sum(COUNTED_MICROS).label("cost")
    query = (
        select(col(Spend.run_id), cost, col(Run.status), col(Run.request))
        .join(Run, col(Run.id) == col(Spend.run_id))
        .where(_in_window(col(Spend.created_at), start, end), IS_COUNTED)
        .group_by(col(Spend.run_id))
        .order_by(cost.desc(), col(Spend.run_id))
        .limit(limit)
    )
    with ledger.read() as session:
        rows = session.exec(query).all()
        skills = run_skills(session, [_id(r[0]) for r in rows])
    return [CostlyRun(_id(i), int(c), s, q, skills.get(_id(i), ())) for i, c, s, q in rows]


def _id(run_id: int | None) -> int:
    """A run id these queries return: a primary key, or a foreign key joined to one, so never NULL."""
    assert run_id is not None
    return run_id


# failures and handoffs --------------------------------------------------------------------------------------

def failure_groups(session: Session, start: dt.datetime, end: dt.datetime, reasons: int = 2) -> list[FailureGroup]:
    """Failures in [start, end) by component, most first, each with its `reasons` most frequent reasons."""
    reason = (col(Failure.error_type) + ": " + func.substr(col(Failure.message), 1, 80)).label("reason")
    count = func.count().label("n")
    rows = session.exec(
        select(col(Failure.component), reason, count)
        .where(_in_window(col(Failure.created_at), start, end))
        .group_by(col(Failure.component), reason)
        .order_by(count.desc(), reason)
    ).all()
    groups: dict[str, list[tuple[str, int]]] = {}
    for component, text, n in rows:
        groups.setdefault(str(component), []).append((str(text), int(n)))
    found = [FailureGroup(c, sum(n for _, n in items), tuple(items[:reasons])) for c, items in groups.items()]
    return sorted(found, key=lambda g: (-g.count, g.component))


def _handoffs(session: Session, start: dt.datetime, end: dt.datetime, limit: int = 5) -> list[HandoffLine]:
    # Five columns are more than SQLModel's select() types: a Core query on the session's connection.
    rows = session.connection().execute(
        core_select(col(Run.id), col(Run.status), col(Run.request), col(Run.stop_reason), col(Run.final_text))
        .where(_in_window(col(Run.started_at), start, end), col(Run.status).in_(("handoff", "budget_exhausted")))
        .order_by(col(Run.started_at).desc(), col(Run.id).desc())
        .limit(limit)
    ).all()
    return [HandoffLine(_id(i), s, q, _first_line(text) or (stop or s)) for i, s, q, stop, text in rows]


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].strip()


def events_accepted_today(aria: Aria) -> int:
    """Signed events accepted since the owner's midnight (Telegram's own updates not counted)."""
    start, _ = local_day_bounds(aria.ledger.now().astimezone(aria.settings.tz).date(), aria.settings.tz)
    with aria.ledger.read() as session:
        return int(session.exec(
            select(func.count()).select_from(Event)
            .where(col(Event.received_at) >= start, col(Event.status) == "accepted",
                   ~col(Event.source).startswith("telegram"))
        ).one())
