"""Channel-neutral texts for the owner's commands (/help, /skills, /status), shared by Telegram and the terminal."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import func
from sqlmodel import col, select

from aria.digest.data import NOT_NOOP
from aria.knowledge import owner as notes
from aria.ledger import MICROS, Event, Failure, Run
from aria.ledger.reports import local_day_bounds
from aria.mcp.views import skill_state
from aria.mcp.views import status_lines as mcp_status_lines

if TYPE_CHECKING:
    from aria.app import Aria

COMMANDS: list[tuple[str, str]] = [
    ("help", "what Aria can do"),
    ("status", "health, spend today, circuits"),
    ("skills", "skills and tools; /skills <skill> <shadow|ask|auto> sets autonomy"),
    ("digest", "today's digest: spend, runs, failures, with a chart"),
    ("cost", "spend over the last days: /cost [days]"),
    ("approvals", "actions waiting for your approval"),
    ("shadow", "what skills in shadow mode proposed, agreement, promotions"),
    ("pause", "stop every risky and scheduled action"),
    ("resume", "let actions run again"),
    ("mcp", "MCP servers and their tools; /mcp accept|keep <tool> after a tool's definition changed"),
    *notes.HELP,
    ("new", "start a new conversation (earlier messages are no longer sent to the model)"),
    ("budget", "caps, spend today and what is left; /budget day|request <usd>, /budget today +<usd>"),
    ("model", "models, circuits and spend; /model cheap|strong <name> switches"),
    ("trace", "what a run did, step by step: /trace [run id]"),
    ("export", "runs, spend and failures as CSV files: /export [days]"),
]
LEVELS = ("shadow", "ask", "auto")


def help_text(model_configured: bool) -> str:
    """The list of commands, and how to talk to Aria."""
    lines = ["Aria, your ops agent. Write a question or a task in plain words, or use:"]
    lines += [f"/{name} - {about}" for name, about in COMMANDS]
    if not model_configured:
        lines.append("No model endpoint is configured yet: set OPENAI_API_KEY or OPENAI_BASE_URL.")
    return "\n".join(lines)


def skills_text(aria: Aria) -> str:
    """Skills, their tools, risk and autonomy; broken skills loudly."""
    lines: list[str] = []
    for skill in aria.skills.skills:
        lines.append(f"{skill.name}: {skill.description}")
        server = skill_state(aria.mcp, skill.name)
        if server is not None:
            lines.append(f"  {server}")
        lines += [f"  • {t.name} ({t.risk}, {aria.gate.autonomy(t)})" for t in skill.tools]
    for broken in aria.skills.broken:
        lines.append(f"⚠ {broken.name} failed to load: {broken.error}")
    return "\n".join(lines) or "No skills installed."


def set_autonomy(aria: Aria, args: list[str]) -> str:
    """`/skills <skill> <shadow|ask|auto>`: change a skill's autonomy, refusing `auto` for risky tools."""
    if len(args) != 2 or args[1] not in LEVELS:
        return "Usage: /skills <skill> <shadow|ask|auto>"
    skill = next((s for s in aria.skills.skills if s.name == args[0]), None)
    if skill is None:
        return f"No skill named {args[0]!r}. Installed: " + ", ".join(s.name for s in aria.skills.skills)
    risky = any(t.risk == "risky" for t in skill.tools)
    refusal = aria.gate.set_autonomy(skill.name, args[1], risky)  # type: ignore[arg-type]
    return f"Not changed: {refusal}." if refusal else f"{skill.name} is now {args[1]}."


def status_text(aria: Aria) -> str:
    """Uptime, version, endpoint and circuits, today's spend against the cap, runs and failures today."""
    now = aria.ledger.now()
    local_midnight, _ = local_day_bounds(now.astimezone(aria.settings.tz).date(), aria.settings.tz)
    with aria.ledger.read() as s:
        runs = dict(s.exec(select(Run.status, func.count()).where(Run.started_at >= local_midnight,
                                                                  col(Run.channel) != "scheduler")
                           .group_by(Run.status)).all())
        jobs = s.exec(select(func.count()).select_from(Run).where(Run.started_at >= local_midnight,
                                                                  col(Run.channel) == "scheduler", NOT_NOOP)).one()
        failures = s.exec(select(func.count()).select_from(Failure).where(Failure.created_at >= local_midnight)).one()
        events = dict(s.exec(select(Event.status, func.count()).where(Event.received_at >= local_midnight,
                                                                      ~col(Event.source).startswith("telegram"))
                             .group_by(Event.status)).all())
    spent = aria.budget.day_spent()
    uptime = now - aria.started_at
    endpoint = aria.settings.openai_base_url or ("api.openai.com" if aria.caller else "not configured")
    lines = [
        f"Aria {aria.version}, up {_duration(uptime)}",
        *_ledger_lines(aria),
        f"Model endpoint: {endpoint} (cheap {aria.router.cheap}, strong {aria.router.strong})",
        f"Spend today: ${spent / MICROS:.4f} of ${aria.budget.day_cap / MICROS:.2f} "
        f"({_share(spent, aria.budget.day_cap)})",
        "Runs today: " + (", ".join(f"{k} {v}" for k, v in sorted(runs.items())) or "none"),
        f"Failures today: {failures}",
        f"Scheduled jobs run today: {jobs}",
        f"Telegram: {aria.telegram_mode}" + (" (no Bot API calls while idle)"
                                             if aria.telegram_mode == "webhook" else ""),
    ]
    models = [aria.settings.model_cheap, aria.settings.model_strong, *aria.settings.model_fallbacks]
    for model in dict.fromkeys(models):
        if not aria.prices.is_known(model):
            lines.append(f"⚠ No price known for {model}: calls to it are refused (set ARIA_PRICES_FILE).")
    # Approvals, circuits, pause, next jobs, undelivered messages, outbound calls: the digest's "Now" lines.
    lines += aria.digests.status_lines()
    if events:
        lines.append("Events today: " + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))
    lines += mcp_status_lines(aria.mcp)
    if aria.skills.broken:
        lines.append("Broken skills: " + ", ".join(b.name for b in aria.skills.broken))
    return "\n".join(lines)


def _ledger_lines(aria: Aria) -> list[str]:
    health = aria.ledger.health
    if health.writable:
        return []
    since = f" since {health.since:%H:%M} UTC" if health.since else ""
    return [f"⚠ Ledger: cannot be written{since} ({health.reason}). Not acting: no model calls, no tools."]


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "n/a"


def _duration(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"
