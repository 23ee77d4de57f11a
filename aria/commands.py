"""The owner's commands, channel-neutral: Telegram and `aria chat` answer /help, /status, /skills, /digest, /cost,
/approvals, /pause and /resume from here, and only deliver what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aria.agent.outcome import Action
from aria.errors import LedgerUnavailable
from aria.rollout.views import shadow_command
from aria.scheduler import PAUSED_FLAG
from aria.views import help_text, set_autonomy, skills_text, status_text

if TYPE_CHECKING:
    from aria.app import Aria

COST_MAX_DAYS = 90
NAMES = ("help", "start", "status", "skills", "digest", "cost", "approvals", "pause", "resume", "shadow")


@dataclass(frozen=True)
class Reply:
    """One message a command answers with."""

    text: str
    photo: bytes | None = None
    actions: list[Action] = field(default_factory=list)
    approval_id: int | None = None  # the approval whose buttons it carries
    purpose: str = "message"


async def answer(aria: Aria, name: str, args: list[str]) -> list[Reply]:
    """The replies to `/name args`; an unknown name gets the help text."""
    if name == "status":
        return [Reply(status_text(aria))]
    if name == "skills":
        return [Reply(set_autonomy(aria, args) if args else skills_text(aria))]
    if name == "digest":
        composed = await aria.digests.compose()
        return [Reply(composed.text, photo=composed.png, purpose="digest")]
    if name == "cost":
        days = args[0] if args else "7"
        if not (days.isascii() and days.isdigit()) or not 1 <= int(days) <= COST_MAX_DAYS:
            return [Reply(f"Usage: /cost [days], 1 to {COST_MAX_DAYS}")]
        composed = await aria.digests.cost(int(days))
        return [Reply(composed.text, photo=composed.png, purpose="digest")]
    if name == "approvals":
        pending = aria.approvals.pending()
        if not pending:
            return [Reply("No approvals are waiting.")]
        return [Reply(a.summary, actions=aria.runs.request_actions(a), approval_id=a.id, purpose="approval")
                for a in pending]
    if name == "shadow":
        return [Reply(text, actions=actions) for text, actions in shadow_command(aria, args)]
    if name in ("pause", "resume"):
        return [Reply(_switch(aria, paused=name == "pause"))]
    return [Reply(help_text(aria.caller is not None))]


def _switch(aria: Aria, *, paused: bool) -> str:
    try:
        aria.ledger.set_flag(PAUSED_FLAG, "yes" if paused else "no")
    except LedgerUnavailable as exc:
        return f"Not changed: {exc}."
    if paused:
        return "Paused. Risky actions and scheduled actions are skipped (and recorded) until /resume."
    return "Resumed. Actions run again (risky ones still ask)."
