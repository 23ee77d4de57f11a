"""Escalated actions: the approval state machine, with exactly-once execution.

    pending ──approve──> approved ──claim──> executing ──> executed | failed
       │  └──reject───> rejected                  └──crash──> unknown (it may have run)
       └──expire───> expired

Every transition is one compare-and-set UPDATE (`WHERE status = <expected>`), so a double press, two presses at
once, a duplicated update or a second process can win it only once. The action runs only for the caller that won
`approved -> executing`; a crash while executing leaves `executing`, which start-up turns into `unknown` ("may have
run") rather than running the action a second time or recording it as not run. An `approved` approval whose action
never began is carried out at start-up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import update
from sqlmodel import col, select

from aria.ledger import Approval, Ledger
from aria.ledger.models import ApprovalStatus

PressResult = Literal["approved", "rejected", "not_found", "expired", "already_decided", "stale"]
CALLBACK_PREFIX = "ap"
REFUSALS: dict[PressResult, str] = {
    "not_found": "That approval does not exist.",
    "stale": "That button does not match the action on record; nothing was done.",
    "expired": "That approval has expired; nothing was run.",
    "already_decided": "Already decided; nothing more was done.",
}
MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id in button data names nothing


def args_hash(tool: str, arguments: dict[str, Any]) -> str:
    """A stable hash of a tool call: same tool and arguments, same hash."""
    canonical = json.dumps([tool, arguments], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def callback_data(approval: Approval, verb: Literal["a", "r", "d"]) -> str:
    """Button data naming the approval and the hash of what was shown (well under Telegram's 64 bytes)."""
    return f"{CALLBACK_PREFIX}:{approval.id}:{verb}:{approval.args_hash[:12]}"


@dataclass(frozen=True)
class Press:
    """Parsed approval button data."""

    approval_id: int
    verb: Literal["a", "r", "d"]
    hash_prefix: str


def parse_callback(data: str | None) -> Press | None:
    """Approval button data, or None for anything that doesn't parse."""
    parts = (data or "").split(":")
    if len(parts) != 4 or parts[0] != CALLBACK_PREFIX or parts[2] not in ("a", "r", "d"):
        return None
    if not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 19 and int(parts[1]) <= MAX_ID):
        return None
    if len(parts[3]) != 12 or any(c not in "0123456789abcdef" for c in parts[3]):
        return None
    return Press(int(parts[1]), parts[2], parts[3])  # type: ignore[arg-type]


class Approvals:
    """Creates approvals and moves them through their states atomically."""

    def __init__(self, ledger: Ledger, ttl_hours: float) -> None:
        self.ledger = ledger
        self.ttl = dt.timedelta(hours=ttl_hours)

    def create(self, *, run_id: int, tool: str, skill: str, arguments: dict[str, Any], risk: str, summary: str,
               chat_id: int | None, resume_state: dict[str, Any]) -> Approval:
        """Persist a pending approval and what the run needs to resume, before any button is shown."""
        now = self.ledger.now()
        row = Approval(run_id=run_id, tool=tool, skill=skill, args_json=json.dumps(arguments, ensure_ascii=False),
                       args_hash=args_hash(tool, arguments), risk=risk, summary=summary[:300], chat_id=chat_id,
                       resume_state=json.dumps(resume_state, ensure_ascii=False), created_at=now,
                       expires_at=now + self.ttl)
        with self.ledger.write() as s:
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def get(self, approval_id: int) -> Approval | None:
        """One approval by id."""
        with self.ledger.read() as s:
            return s.get(Approval, approval_id)

    def pending(self) -> list[Approval]:
        """Approvals still waiting, oldest first."""
        with self.ledger.read() as s:
            return list(s.exec(select(Approval).where(Approval.status == "pending").order_by(col(Approval.id))))

    def decide(self, press: Press, user_id: int) -> PressResult:
        """Approve or reject a pending, unexpired approval whose hash matches; exactly one press wins."""
        row = self.get(press.approval_id)
        if row is None:
            return "not_found"
        if not row.args_hash.startswith(press.hash_prefix):
            return "stale"
        now = self.ledger.now()
        if row.status == "pending" and row.expires_at <= now:
            self.expire(row.id or 0)
            return "expired"
        new: Literal["approved", "rejected"] = "approved" if press.verb == "a" else "rejected"
        won = self._transition(press.approval_id, "pending", new, decided_by=user_id, decided_at=now,
                               extra=[col(Approval.expires_at) > now])
        return new if won else "already_decided"

    def claim_execution(self, approval_id: int) -> bool:
        """approved -> executing: True for the one caller allowed to run the action."""
        return self._transition(approval_id, "approved", "executing")

    def finish_execution(self, approval_id: int, *, ok: bool, result: str) -> None:
        """executing -> executed | failed, with a short result."""
        self._transition(approval_id, "executing", "executed" if ok else "failed", executed_at=self.ledger.now(),
                         result=result[:1000])

    def expire(self, approval_id: int) -> bool:
        """pending -> expired; True when this call expired it."""
        return self._transition(approval_id, "pending", "expired", decided_at=self.ledger.now(),
                                result="expired before a decision")

    def due_to_expire(self) -> list[Approval]:
        """Pending approvals past their expiry."""
        with self.ledger.read() as s:
            return list(s.exec(select(Approval).where(Approval.status == "pending",
                                                      col(Approval.expires_at) <= self.ledger.now())))

    def mark_unknown(self, approval_id: int) -> bool:
        """executing -> unknown: the process stopped while the action ran, so it may have run; it is not run again."""
        return self._transition(approval_id, "executing", "unknown", executed_at=self.ledger.now(),
                                result="may have run: Aria stopped while the action was executing; not run again")

    def _transition(self, approval_id: int, old: ApprovalStatus, new: ApprovalStatus, *,
                    extra: list[Any] | None = None, **values: Any) -> bool:
        with self.ledger.write() as s:
            result = s.execute(
                update(Approval)
                .where(col(Approval.id) == approval_id, col(Approval.status) == old, *(extra or []))
                .values(status=new, **values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
