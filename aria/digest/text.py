"""The digest's words: plain text (no markup to escape or break when split), short lines for a phone, and the
headline money figures first so they land in the photo's caption."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from aria.digest.data import CostReport, DigestData, FailureGroup, LiveState, SpendFigures
from aria.ledger.reports import SpendLine, format_usd

NO_ACTIVITY = "No activity yet."
REQUEST_CHARS = 60
SHOWN = 5  # lines per list before "and N more"


def day_name(day: dt.date, today: dt.date) -> str:
    """"today", "yesterday" or "Mon 2 Mar"."""
    if day == today:
        return "today"
    if day == today - dt.timedelta(days=1):
        return "yesterday"
    return f"{day:%a} {day.day} {day:%b}"


def title_case(label: str) -> str:
    """A day name at the start of a line: "Today", "Mon 2 Mar" (str.capitalize would lower the month)."""
    return label[:1].upper() + label[1:]


def share(part: int, whole: int) -> str:
    """A percentage of a budget, flagged once it is reached."""
    if whole <= 0:
        return "n/a"
    percent = 100 * part / whole
    return f"{percent:.0f}%" + (" ⚠" if percent >= 100 else "")


def clip(text: str, limit: int = REQUEST_CHARS) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def digest_text(data: DigestData, state: LiveState, *, tz: ZoneInfo, today: dt.date, note: str = "") -> str:
    """The whole digest for `data.day`."""
    when = day_name(data.day, today)
    title = f"Aria digest · {data.day:%a} {data.day.day} {data.day:%b}" + (f" ({when})" if when[0].islower() else "")
    head = [*([note] if note else []), title]
    if not data.active:
        body = [NO_ACTIVITY, *([_now_section(state, tz)] if state.notable else [])]
        return "\n\n".join(["\n".join(head), *body])
    sections = [
        "\n".join(head),
        _spend_section(data.spend, data.day, today, data.by_model, data.by_skill),
        _skills_section(data),
        _costly_section(data),
        _runs_section(data.outcomes, data.jobs),
        _failures_section(data.failures),
        _handoffs_section(data),
        _now_section(state, tz),
    ]
    return "\n\n".join(section for section in sections if section)


def _spend_section(spend: SpendFigures, day: dt.date, today: dt.date, by_model: list[SpendLine],
                   by_skill: list[SpendLine]) -> str:
    previous = day - dt.timedelta(days=1)
    lines = ["Spend",
             f"• {title_case(day_name(day, today))}: {format_usd(spend.day)} of {format_usd(spend.day_cap)} "
             f"({share(spend.day, spend.day_cap)})",
             f"• {title_case(day_name(previous, today))}: {format_usd(spend.previous_day)}",
             f"• Last 7 days: {format_usd(spend.last_7_days)}",
             *_month_lines(spend, day, today)]
    if by_model:
        lines.append("By model: " + _spend_list(by_model))
    if by_skill:
        lines.append("By skill: " + _spend_list(by_skill))
    return "\n".join(lines)


def _month_lines(spend: SpendFigures, day: dt.date, today: dt.date) -> list[str]:
    month = f"{day:%B}"
    lines = [f"• {month} to date: {format_usd(spend.month_to_date)} of {format_usd(spend.month_cap)} "
             f"({share(spend.month_to_date, spend.month_cap)})"]
    if (day.year, day.month) == (today.year, today.month) and spend.month_forecast != spend.month_to_date:
        lines.append(f"• Forecast {month}: {format_usd(spend.month_forecast)} "
                     f"({share(spend.month_forecast, spend.month_cap)} of budget)")
    return lines


def _spend_list(lines: list[SpendLine]) -> str:
    shown = [f"{line.key} {format_usd(line.cost_micros)}" for line in lines[:SHOWN]]
    rest = sum(line.cost_micros for line in lines[SHOWN:])
    return ", ".join(shown) + (f", others {format_usd(rest)}" if rest else "")


def _skills_section(data: DigestData) -> str:
    if not data.skills:
        return ""
    lines = ["Skills: runs · success · $ per success"]
    for stats in data.skills[:SHOWN]:
        per = format_usd(stats.per_success) if stats.per_success is not None else "none ok"
        lines.append(f"• {stats.skill}: {stats.runs} · {round(100 * stats.ok / stats.runs)}% · {per}")
    if len(data.skills) > SHOWN:
        lines.append(f"…and {len(data.skills) - SHOWN} more")
    return "\n".join(lines)


def _costly_section(data: DigestData) -> str:
    if not data.costly:
        return ""
    lines = ["Most expensive runs"]
    for run in data.costly:
        skills = f" [{', '.join(run.skills)}]" if run.skills else ""
        lines.append(f"• #{run.id} {format_usd(run.cost_micros)} {run.status}{skills}: {clip(run.request)}")
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _runs_section(outcomes: dict[str, int], jobs: dict[str, int]) -> str:
    total = sum(outcomes.values())
    lines = [f"Runs: {total}" + (f" ({_counts(outcomes)})" if total else "")]
    if jobs:
        lines.append(f"Scheduled jobs: {sum(jobs.values())} ({_counts(jobs)})")
    return "\n".join(lines)


def _failures_section(groups: list[FailureGroup]) -> str:
    if not groups:
        return "Failures: none"
    lines = [f"Failures: {sum(g.count for g in groups)}"]
    for group in groups[:SHOWN]:
        reasons = "; ".join(f"{clip(reason, 70)} ×{n}" for reason, n in group.reasons)
        lines.append(f"• {group.component} {group.count}: {reasons}")
    return "\n".join(lines)


def _handoffs_section(data: DigestData) -> str:
    total = data.outcomes.get("handoff", 0) + data.outcomes.get("budget_exhausted", 0)
    if not total:
        return ""
    lines = [f"Handoffs, what I tried and failed at: {total}"]
    lines += [f"• #{h.run_id} {clip(h.request, 40)} → {clip(h.reason, 90)}" for h in data.handoffs]
    if total > len(data.handoffs):
        lines.append(f"…and {total - len(data.handoffs)} more")
    return "\n".join(lines)


def _now_section(state: LiveState, tz: ZoneInfo) -> str:
    return "\n".join(["Now", *status_lines(state, tz)])


def status_lines(state: LiveState, tz: ZoneInfo) -> list[str]:
    """Pending approvals, circuits, paused state, next jobs and undelivered messages, one line each."""
    approvals = ", ".join(f"#{i} {clip(summary, 40)}" for i, summary in state.pending_approvals[:3])
    circuits = ", ".join(f"{key} {status}" for key, status in state.open_circuits)
    return [
        f"Pending approvals: {len(state.pending_approvals)}" + (f" ({approvals})" if approvals else ""),
        "Circuits: " + (circuits or "all closed"),
        "Paused: yes (/resume to lift)" if state.paused else "Paused: no",
        next_jobs_line(state, tz),
        undelivered_line(state),
        calls_line(state),
    ]


def calls_line(state: LiveState) -> str:
    """Outbound API calls per connector today, and the events that came in instead of being polled for."""
    calls = ", ".join(f"{name} {count}" for name, count in sorted(state.outbound_calls.items())) or "none"
    return f"Outbound calls today: {calls}; events received instead of polling: {state.events_accepted}"


def next_jobs_line(state: LiveState, tz: ZoneInfo) -> str:
    """The next scheduled jobs and when they run, in the owner's time."""
    jobs = ", ".join(f"{name} {when.astimezone(tz):%a %H:%M}" for name, when in state.next_jobs)
    return "Next jobs: " + (jobs or "none")


def undelivered_line(state: LiveState) -> str:
    """Outbox messages not delivered yet, and how many of them Telegram refused."""
    refused = f" ({state.refused} refused by Telegram)" if state.refused else ""
    return f"Undelivered messages: {state.undelivered}{refused}"


def cost_text(report: CostReport, *, today: dt.date) -> str:
    """Figures for /cost: the period's total and daily average, today, the month and its forecast, by model and
    by skill."""
    days = (report.last - report.first).days + 1
    spend = report.spend
    lines = [f"Cost · last {days} day{'s' if days != 1 else ''} "
             f"({report.first:%a} {report.first.day} {report.first:%b} – {report.last:%a} {report.last.day} "
             f"{report.last:%b})",
             f"Total: {format_usd(report.total)}, {format_usd(report.total // days)} a day on average "
             f"(budget {format_usd(spend.day_cap)} a day)",
             f"{title_case(day_name(report.last, today))}: {format_usd(spend.day)} of {format_usd(spend.day_cap)} "
             f"({share(spend.day, spend.day_cap)})",
             *(line.removeprefix("• ") for line in _month_lines(spend, report.last, today))]
    if report.by_model:
        lines.append("By model: " + _spend_list(report.by_model))
    if report.by_skill:
        lines.append("By skill: " + _spend_list(report.by_skill))
    if not report.total:
        lines.append("No spend in this period.")
    return "\n".join(lines)
