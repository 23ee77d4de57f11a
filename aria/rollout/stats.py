"""The numbers behind a rollout: agreement with the owner, its Wilson lower bound, and the evidence at a level.

Evidence is counted at the skill's current level, since it got there (the `autonomy:<skill>` flag's time): at
`shadow` the owner's 👍/👎 on proposals, at `ask` the approvals decided (approved is agreement, rejected is not).
A critical miss is a 👎 on a risky proposal or a rejected approval.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from aria.agent.gate import AUTONOMY_FLAG
from aria.ledger import Approval, KeyValue
from aria.ledger.models import Proposal

Z_95 = 1.959963984540054  # two-sided 95 %: the usual "Wilson 95 % interval", whose lower end is taken
APPROVED = ("approved", "executing", "executed", "failed", "unknown")  # the owner pressed Approve


def wilson_lower_bound(agreed: int, judged: int, z: float = Z_95) -> float:
    """The lower end of the Wilson score interval for `agreed` of `judged`: a rate that small samples cannot fake
    (20 of 20 gives 0.84, 35 of 35 gives 0.91). Zero when nothing was judged."""
    if judged <= 0:
        return 0.0
    p = agreed / judged
    z2 = z * z
    centre = p + z2 / (2 * judged)
    margin = z * math.sqrt(p * (1 - p) / judged + z2 / (4 * judged * judged))
    return max(0.0, (centre - margin) / (1 + z2 / judged))


@dataclass(frozen=True)
class Evidence:
    """Judgements of a skill at one level: how many, how many agreed, critical misses."""

    level: str
    judged: int
    agreed: int
    critical: int

    @property
    def lower_bound(self) -> float:
        """Wilson 95 % lower bound on agreement."""
        return wilson_lower_bound(self.agreed, self.judged)


def level_since(session: Session, skill: str) -> dt.datetime | None:
    """When the skill reached its current level (None: it never changed, so all its history counts)."""
    row = session.get(KeyValue, AUTONOMY_FLAG + skill)
    return row.updated_at if row is not None else None


def shadow_evidence(session: Session, skill: str, since: dt.datetime | None) -> Evidence:
    """👍/👎 on the skill's proposals made since `since`."""
    where = [col(Proposal.skill) == skill, col(Proposal.verdict).is_not(None)]
    if since is not None:
        where.append(col(Proposal.created_at) >= since)
    rows = session.exec(select(Proposal.verdict, Proposal.risk, func.count()).where(*where)
                        .group_by(col(Proposal.verdict), col(Proposal.risk))).all()
    judged = sum(n for _, _, n in rows)
    agreed = sum(n for verdict, _, n in rows if verdict == "up")
    critical = sum(n for verdict, risk, n in rows if verdict == "down" and risk == "risky")
    return Evidence("shadow", judged, agreed, critical)


def approval_evidence(session: Session, skill: str, since: dt.datetime | None) -> Evidence:
    """Approvals of the skill's actions decided since `since` (expired ones judged nothing)."""
    where = [col(Approval.skill) == skill, col(Approval.status).in_((*APPROVED, "rejected"))]
    if since is not None:
        where.append(col(Approval.created_at) >= since)
    rows = session.exec(select(Approval.status, func.count()).where(*where).group_by(col(Approval.status))).all()
    judged = sum(n for _, n in rows)
    rejected = sum(n for status, n in rows if status == "rejected")
    return Evidence("ask", judged, judged - rejected, rejected)


def evidence(session: Session, skill: str, level: str) -> Evidence:
    """What counts towards promoting a skill from `level`, since it reached it."""
    since = level_since(session, skill)
    if level == "shadow":
        return shadow_evidence(session, skill, since)
    if level == "ask":
        return approval_evidence(session, skill, since)
    return Evidence(level, 0, 0, 0)
