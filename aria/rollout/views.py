"""The owner's view of shadow deployment and rollout: `/shadow` and the digest's rollout lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from aria.agent.outcome import Action
from aria.ledger import Approval
from aria.ledger.models import Proposal
from aria.rollout.stats import APPROVED

if TYPE_CHECKING:
    from aria.app import Aria

DISAGREEMENTS_SHOWN = 5


@dataclass(frozen=True)
class SkillRates:
    """All-time figures of one skill: proposals, judgements, agreement, approvals."""

    skill: str
    proposals: int
    judged: int
    agreed: int
    decided: int
    approved: int


def rates(session: Session) -> dict[str, SkillRates]:
    """Per skill with any proposal or decided approval: its all-time counts (two grouped reads)."""
    proposals = session.exec(select(Proposal.skill, func.count(), func.count(col(Proposal.verdict)),
                                    func.sum(case((col(Proposal.verdict) == "up", 1), else_=0)))
                             .group_by(col(Proposal.skill))).all()
    approvals = session.exec(select(Approval.skill, func.count(),
                                    func.sum(case((col(Approval.status).in_(APPROVED), 1), else_=0)))
                             .where(col(Approval.status).in_((*APPROVED, "rejected")),
                                    col(Approval.skill).is_not(None))
                             .group_by(col(Approval.skill))).all()
    found: dict[str, SkillRates] = {}
    for skill, count, judged, agreed in proposals:
        found[skill] = SkillRates(skill, count, judged, int(agreed or 0), 0, 0)
    for name, decided, approved in approvals:
        if name is None:
            continue
        base = found.get(name, SkillRates(name, 0, 0, 0, 0, 0))
        found[name] = SkillRates(name, base.proposals, base.judged, base.agreed, decided, int(approved or 0))
    return found


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "none yet"


USAGE = "Usage: /shadow, or /shadow up|down <proposal> (👍/👎 without the buttons), or /shadow note <proposal> <text>"
VERDICTS = {"up": "up", "👍": "up", "down": "down", "👎": "down"}


def shadow_command(aria: Aria, args: list[str], user_id: int | None = None) -> list[tuple[str, list[Action]]]:
    """`/shadow [up|down <id> | note <id> <text>]`: the view, or a judgement or note typed instead of pressed (the
    terminal has no buttons). Replies as (text, buttons)."""
    if not args:
        return [shadow_reply(aria)]
    verb = args[0].lower()
    if len(args) < 2 or not (args[1].isascii() and args[1].isdigit() and len(args[1]) <= 18) or \
            (verb not in VERDICTS and verb != "note") or (verb == "note" and len(args) < 3):
        return [(USAGE, [])]
    proposal_id = int(args[1])
    if aria.rollout.get(proposal_id) is None:
        return [(f"No proposal {proposal_id}.", [])]
    if verb == "note":
        aria.rollout.add_note(proposal_id, " ".join(args[2:]))
        return [(f"Noted on proposal {proposal_id}.", [])]
    judge = user_id if user_id is not None else (aria.settings.owner_ids[0] if aria.settings.owner_ids else 0)
    outcome, notices = aria.rollout.judge(proposal_id, VERDICTS[verb], judge)  # type: ignore[arg-type]
    said = {"judged": "Noted.", "changed": "Changed your answer.", "same": "Already noted."}.get(outcome, "")
    return [(f"{said} (proposal {proposal_id})", []), *((n.text, n.actions) for n in notices)]


def shadow_reply(aria: Aria) -> tuple[str, list[Action]]:
    """`/shadow`: each skill's level, proposals, agreement, disagreements and promotion gate; a Promote button where
    the gate passes (pressing it is what promotes)."""
    rollout = aria.rollout
    with aria.ledger.read() as s:
        found = rates(s)
        downs = list(s.exec(select(Proposal).where(Proposal.verdict == "down")
                            .order_by(col(Proposal.id).desc()).limit(50)))
    lines = ["Shadow proposals and rollout (👍 = you would have approved it)"]
    actions: list[Action] = []
    shown = 0
    for skill in aria.skills.skills:
        figures = found.get(skill.name)
        level = rollout.level(skill)
        if figures is None and level != "shadow":
            continue
        shown += 1
        figures = figures or SkillRates(skill.name, 0, 0, 0, 0, 0)
        evidence = rollout.evidence(skill)
        blocked = rollout.gate_passed(skill, evidence)
        lines.append(f"{skill.name}: {level} · {figures.proposals} proposals, agreement "
                     f"{_rate(figures.agreed, figures.judged)} · approvals {_rate(figures.approved, figures.decided)}")
        lines.append(f"  at {level}: {evidence.agreed} of {evidence.judged} agreed, Wilson lower bound "
                     f"{evidence.lower_bound:.2f} · " + (f"not yet promotable: {blocked}" if blocked else
                                                         "promotion gate passed"))
        if blocked is None:
            notice = rollout.suggest(skill.name)
            actions += notice.actions if notice is not None else rollout.open_actions(skill.name)
        mine = [p for p in downs if p.skill == skill.name][:DISAGREEMENTS_SHOWN]
        for proposal in mine:
            note = f" — note: {proposal.note}" if proposal.note else ""
            lines.append(f"  👎 #{proposal.id} {proposal.summary} ({proposal.risk}){note}")
    if not shown:
        return ("No shadow proposals yet. Put a skill in shadow mode with /skills <skill> shadow: it proposes "
                "instead of acting, and you judge each proposal with 👍/👎."), []
    return "\n".join(lines), actions


def digest_lines(aria: Aria) -> list[str]:
    """The digest's rollout section: per skill with any history, its level, agreement and approval rates."""
    with aria.ledger.read() as s:
        found = rates(s)
    lines: list[str] = []
    for skill in aria.skills.skills:
        figures = found.get(skill.name)
        level = aria.rollout.level(skill)
        if figures is None and level != "shadow":
            continue
        figures = figures or SkillRates(skill.name, 0, 0, 0, 0, 0)
        lines.append(f"• {skill.name}: {level} · agreement {_rate(figures.agreed, figures.judged)} · "
                     f"approvals {_rate(figures.approved, figures.decided)}")
    return ["Rollout: autonomy · agreement · approvals", *lines] if lines else []
