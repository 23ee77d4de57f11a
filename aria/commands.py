"""The owner's commands, channel-neutral: Telegram and `aria chat` answer /help, /status, /skills, /digest, /cost,
/approvals, /pause, /resume and /mcp from here, and only deliver what comes back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aria import control, export, trace
from aria.agent.outcome import Action
from aria.errors import LedgerUnavailable
from aria.knowledge import owner as notes
from aria.mcp.commands import mcp_text
from aria.rollout.views import shadow_command
from aria.scheduler import PAUSED_FLAG
from aria.views import help_text, set_autonomy, skills_text, status_text

if TYPE_CHECKING:
    from aria.app import Aria
    from aria.channel import Channel

COST_MAX_DAYS = 90
NAMES = ("help", "start", "status", "skills", "digest", "cost", "approvals", "pause", "resume", "mcp",
         *notes.COMMANDS, *control.NAMES, "trace", "export", "shadow")


@dataclass(frozen=True)
class Reply:
    """One message a command answers with."""

    text: str
    photo: bytes | None = None
    actions: list[Action] = field(default_factory=list)
    approval_id: int | None = None  # the approval whose buttons it carries
    purpose: str = "message"
    document: bytes | None = None  # a file (an export), sent as a document named `file_name`
    file_name: str | None = None


async def answer(aria: Aria, name: str, args: list[str], *, chat_id: int | None = None,
                 user_id: int | None = None, raw: str = "") -> list[Reply]:
    """The replies to `/name args` from `user_id` in `chat_id` (`raw`: the message as written, when there is one);
    an unknown name gets the help text."""
    if name in (*control.NAMES, "trace", "export"):
        return await owner_control(aria, name, args, chat_id=chat_id, user_id=user_id)
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
    if name == "mcp":
        return [Reply(mcp_text(aria.mcp, args))]
    if name == "shadow":
        return [Reply(text, actions=actions) for text, actions in shadow_command(aria, args, user_id)]
    if name in ("pause", "resume"):
        return [Reply(_switch(aria, paused=name == "pause"))]
    if name in notes.COMMANDS:
        # Off the event loop: a search may load the embedding model and reads the index.
        return [Reply(await asyncio.to_thread(notes.answer, aria.knowledge, name, args, raw))]
    return [Reply(help_text(aria.caller is not None))]


async def send(aria: Aria, channel: Channel, chat_id: int, replies: list[Reply]) -> None:
    """Write and deliver a command's replies in a chat, every part of each kept (buttons, photo, document)."""
    for reply in replies:
        await aria.runs.reply(channel, chat_id, reply.text, photo=reply.photo, actions=reply.actions,
                              purpose=reply.purpose, approval_id=reply.approval_id, document=reply.document,
                              file_name=reply.file_name)


def _switch(aria: Aria, *, paused: bool) -> str:
    try:
        aria.ledger.set_flag(PAUSED_FLAG, "yes" if paused else "no")
    except LedgerUnavailable as exc:
        return f"Not changed: {exc}."
    if paused:
        return "Paused. Risky actions and scheduled actions are skipped (and recorded) until /resume."
    return "Resumed. Actions run again (risky ones still ask)."


async def owner_control(aria: Aria, name: str, args: list[str], *, chat_id: int | None,
                        user_id: int | None) -> list[Reply]:
    """/new (/clear, /reset), /budget, /model, /trace and /export."""
    if name in ("new", "clear", "reset"):
        return [Reply(control.new_conversation(aria, chat_id))]
    if name == "budget":
        text, actions = control.budget_command(aria, args, chat_id=chat_id, user_id=user_id)
        return [Reply(text, actions=actions)]
    if name == "model":
        return [Reply(control.model_command(aria, args, chat_id=chat_id, user_id=user_id))]
    if name == "trace":
        return [Reply(trace.trace_command(aria, args, chat_id))]
    days = export.parse_days(args)
    if days is None:
        return [Reply(export.USAGE)]
    files = await asyncio.to_thread(export.export_files, aria, days)
    return [Reply(f.caption, document=f.data, file_name=f.name, purpose="export") for f in files]
