"""Shadow deployment and gradual rollout of a skill: `shadow → ask → auto`, earned with the owner's judgements.

    shadow: a proposal row + "I would have done X" with 👍/👎 ──> judged (a reply to the message adds a note)
    enough judgements, Wilson lower bound ≥ threshold, no critical miss ──> a promotion *suggested*, with a button
    the owner's press ──> promoted one level (recorded, announced)
    👎 on a risky proposal, or a rejected approval ──> demoted one level at once (recorded, announced)

Nothing here changes a level without the owner: a promotion waits for the press; a demotion only ever lowers it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import update
from sqlmodel import col, select

from aria.agent.escalation import in_full, summarise
from aria.agent.gate import AUTONOMY_FLAG
from aria.agent.outcome import Action
from aria.agent.provenance import Provenance
from aria.ledger import Approval, KeyValue
from aria.ledger.models import Proposal, ProposalVerdict
from aria.ledger.models import Rollout as RolloutRow
from aria.rollout.stats import Evidence, evidence
from aria.skills import Autonomy, Skill, ToolSpec

if TYPE_CHECKING:
    from aria.app import Aria

log = logging.getLogger(__name__)

UP: dict[str, Autonomy] = {"shadow": "ask", "ask": "auto"}
DOWN: dict[str, Autonomy] = {"auto": "ask", "ask": "shadow"}
JUDGE_PREFIX = "sh"
PROMOTE_PREFIX = "ro"
NOTE_CHARS = 500
Judged = Literal["judged", "changed", "same", "not_found"]


def judge_actions(proposal_id: int) -> list[Action]:
    """The 👍 / 👎 buttons of a proposal (they stay, so the owner can change their mind)."""
    return [Action("👍 would approve", f"{JUDGE_PREFIX}:{proposal_id}:up"),
            Action("👎 would not", f"{JUDGE_PREFIX}:{proposal_id}:down")]


def parse_judge(data: str | None) -> tuple[int, ProposalVerdict] | None:
    """`sh:<id>:up|down`, or None."""
    parts = (data or "").split(":")
    if len(parts) != 3 or parts[0] != JUDGE_PREFIX or parts[2] not in ("up", "down") or not _small_id(parts[1]):
        return None
    return int(parts[1]), parts[2]  # type: ignore[return-value]


def parse_promote(data: str | None) -> int | None:
    """`ro:<suggestion id>`, or None."""
    parts = (data or "").split(":")
    if len(parts) != 2 or parts[0] != PROMOTE_PREFIX or not _small_id(parts[1]):
        return None
    return int(parts[1])


def _small_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and 0 < len(text) <= 18


@dataclass(frozen=True)
class Notice:
    """A message for the owner that came out of a judgement: a suggestion (with its button) or an announcement."""

    text: str
    actions: list[Action]


class Rollout:
    """Records shadow proposals and their judgements, suggests promotions, applies demotions."""

    def __init__(self, aria: Aria) -> None:
        self.aria = aria
        self.ledger = aria.ledger
        self.settings = aria.settings

    # proposals ------------------------------------------------------------------------------------------------

    def propose(self, run_id: int, spec: ToolSpec, arguments: dict[str, Any], provenance: Provenance | None) -> int:
        """Record what a shadowed call would have done and queue "I would have done X" with 👍/👎 (in one
        transaction: a proposal is never recorded without its message, nor the message without it)."""
        run = self.ledger.run(run_id)
        chat_id = run.chat_id if run is not None and run.chat_id is not None else self.aria.runs.owner_chat()
        channel = "terminal" if run is not None and run.channel == "terminal" else "telegram"
        summary = summarise(spec, spec.name, arguments)
        sources = ", ".join(provenance.sources) if provenance is not None and provenance.tainted else None
        outbox = self.aria.outbox
        with self.ledger.write_conn() as conn:
            proposal_id = self.ledger.insert(conn, Proposal, {
                "run_id": run_id, "skill": spec.skill, "tool": spec.name, "risk": spec.risk,
                "args_json": self.ledger.redact(json.dumps(arguments, ensure_ascii=False)) or "{}",
                "summary": (self.ledger.redact(summary) or "")[:300], "sources": sources, "chat_id": chat_id,
                "created_at": self.ledger.now()})
            if chat_id is not None:
                text = proposal_text(proposal_id, spec, arguments, summary, provenance)
                row_id = outbox.insert(conn, outbox.values(chat_id, text, actions=judge_actions(proposal_id),
                                                           run_id=run_id, channel=channel))
                self.ledger.update_row(conn, Proposal, proposal_id, {"outbox_id": row_id})
        outbox.notify()
        return proposal_id

    def get(self, proposal_id: int) -> Proposal | None:
        """One proposal."""
        with self.ledger.read() as s:
            return s.get(Proposal, proposal_id)

    def proposal_for_message(self, chat_id: int, message_id: int) -> Proposal | None:
        """The proposal whose "I would have done X" message is `message_id` in `chat_id` (for a reply's note)."""
        from aria.ledger import Outbox

        with self.ledger.read() as s:
            return s.exec(select(Proposal).join(Outbox, col(Outbox.id) == col(Proposal.outbox_id))
                          .where(col(Outbox.chat_id) == chat_id, col(Outbox.message_id) == message_id)).first()

    # judgements -----------------------------------------------------------------------------------------------

    def judge(self, proposal_id: int, verdict: ProposalVerdict, user_id: int) -> tuple[Judged, list[Notice]]:
        """The owner's 👍/👎 on a proposal (a second press may change it). A 👎 on a risky action demotes the skill
        at once; a 👍 may bring its promotion gate within reach, which is suggested, never applied."""
        proposal = self.get(proposal_id)
        if proposal is None:
            return "not_found", []
        if proposal.verdict == verdict:
            return "same", []
        with self.ledger.write_conn() as conn:
            self.ledger.update_row(conn, Proposal, proposal_id, {
                "verdict": verdict, "judged_by": user_id, "judged_at": self.ledger.now()})
        outcome: Judged = "changed" if proposal.verdict is not None else "judged"
        self._mark_message(proposal, verdict)
        # One proposal is one critical miss: changing the answer back and forth demotes the skill once.
        if verdict == "down" and proposal.risk == "risky" and \
                self.ledger.claim_flag(f"rollout:demoted-by:{proposal_id}", str(user_id)):
            why = f"you would not have approved {proposal.summary} (proposal {proposal_id})"
            return outcome, [self.demote(proposal.skill, why, user_id)]
        suggestion = self.suggest(proposal.skill)
        return outcome, [suggestion] if suggestion is not None else []

    def add_note(self, proposal_id: int, note: str) -> None:
        """The owner's note on a proposal (a reply to its message)."""
        with self.ledger.write_conn() as conn:
            self.ledger.update_row(conn, Proposal, proposal_id, {"note": self.ledger.redact(note[:NOTE_CHARS])})

    def approval_rejected(self, approval: Approval, user_id: int | None) -> Notice | None:
        """A rejected approval is a critical miss: its skill goes down one level at once."""
        if not approval.skill:
            return None
        return self.demote(approval.skill, f"you rejected {approval.summary} (approval {approval.id})", user_id)

    # levels ---------------------------------------------------------------------------------------------------

    def level(self, skill: Skill) -> Autonomy:
        """A skill's effective level: the strictest of its tools' (a risky tool never above `ask` unless allowed)."""
        order = {"shadow": 0, "ask": 1, "auto": 2}
        levels = [self.aria.gate.autonomy(t) for t in skill.tools] or ["auto"]
        return min(levels, key=lambda level: order[level])

    def skill(self, name: str) -> Skill | None:
        """A loaded skill by name."""
        return next((s for s in self.aria.skills.skills if s.name == name), None)

    def evidence(self, skill: Skill) -> Evidence:
        """What counts towards promoting the skill from its level."""
        with self.ledger.read() as s:
            return evidence(s, skill.name, self.level(skill))

    def gate_passed(self, skill: Skill, found: Evidence) -> str | None:
        """Why the skill may not be promoted yet, or None when every gate passes."""
        target = UP.get(found.level)
        if target is None:
            return "it is at the top level"
        if target == "auto" and any(t.risk == "risky" for t in skill.tools) and not self.settings.allow_risky_auto:
            return "its risky tools stay at ask unless ARIA_ALLOW_RISKY_AUTO=true"
        if found.critical:
            return f"{found.critical} critical miss(es) at this level"
        if found.judged < self.settings.rollout_min_judged:
            return f"{found.judged} of {self.settings.rollout_min_judged} judgements needed"
        if found.lower_bound < self.settings.rollout_min_agreement:
            return (f"agreement lower bound {found.lower_bound:.2f} is below "
                    f"{self.settings.rollout_min_agreement:.2f}")
        return None

    def suggest(self, skill_name: str) -> Notice | None:
        """A promotion suggestion with its button, once per level, when every gate passes; None otherwise."""
        skill = self.skill(skill_name)
        if skill is None:
            return None
        found = self.evidence(skill)
        if self.gate_passed(skill, found) is not None:
            return None
        target = UP[found.level]
        with self.ledger.write() as s:
            open_rows = s.exec(select(RolloutRow).where(RolloutRow.skill == skill.name, RolloutRow.status == "open",
                                                        RolloutRow.from_level == found.level)).all()
            if open_rows:
                return None  # already suggested at this level; its button still works
            row = RolloutRow(skill=skill.name, kind="suggested", from_level=found.level, to_level=target,
                             reason=_figures(found), status="open", judged=found.judged, agreed=found.agreed,
                             lower_bound=found.lower_bound, created_at=self.ledger.now())
            s.add(row)
            s.flush()
            row_id = row.id or 0
        text = (f"📈 {skill.name} could move from {found.level} to {target}: {_figures(found)}, no critical miss. "
                f"Nothing changes until you press the button.")
        return Notice(text, [Action(f"Promote {skill.name} to {target}", f"{PROMOTE_PREFIX}:{row_id}")])

    def open_actions(self, skill_name: str) -> list[Action]:
        """The Promote button of a suggestion still open for the skill (shown again by /shadow)."""
        with self.ledger.read() as s:
            rows = s.exec(select(RolloutRow).where(RolloutRow.skill == skill_name, RolloutRow.status == "open")).all()
        return [Action(f"Promote {row.skill} to {row.to_level}", f"{PROMOTE_PREFIX}:{row.id}") for row in rows]

    def promote(self, suggestion_id: int, user_id: int) -> str:
        """Apply a suggested promotion on the owner's press, if the skill is still at the level it was suggested
        from and its gate still passes; returns what to tell the owner."""
        with self.ledger.read() as s:
            row = s.get(RolloutRow, suggestion_id)
        if row is None or row.kind != "suggested":
            return "That suggestion does not exist."
        if row.status != "open":
            return "That suggestion was already used or is out of date; nothing changed."
        skill = self.skill(row.skill)
        now_level = self.level(skill) if skill is not None else None
        found = self.evidence(skill) if skill is not None else None
        blocked = "the skill is no longer installed" if skill is None or found is None else \
            f"{row.skill} is now {now_level}, not {row.from_level}" if now_level != row.from_level else \
            self.gate_passed(skill, found)
        if blocked is not None:
            self._close(suggestion_id, "stale", user_id)
            return f"Not promoted: {blocked}."
        if not self._close(suggestion_id, "applied", user_id):
            return "That suggestion was already used; nothing changed."
        assert skill is not None and found is not None
        return self._change(skill, UP[row.from_level], "promoted", f"your press on the suggestion ({_figures(found)})",
                            user_id, found)

    def demote(self, skill_name: str, why: str, user_id: int | None) -> Notice:
        """One level down at once after a critical miss (at `shadow`, the count at that level starts again)."""
        skill = self.skill(skill_name)
        if skill is None:
            return Notice(f"⚠ A critical miss for {skill_name}, which is no longer installed: {why}.", [])
        level = self.level(skill)
        found = self.evidence(skill)
        target = DOWN.get(level)
        if target is None:
            self._change(skill, "shadow", "held", why, user_id, found)
            return Notice(f"📉 {skill.name} stays in shadow mode (the lowest level): {why}. Its count of "
                          "judgements starts again.", [])
        return Notice(self._change(skill, target, "demoted", why, user_id, found), [])

    def _change(self, skill: Skill, target: Autonomy, kind: Literal["promoted", "demoted", "held"], why: str,
                user_id: int | None, found: Evidence) -> str:
        level = self.level(skill)
        risky = any(t.risk == "risky" for t in skill.tools)
        refusal = self.aria.gate.autonomy_refusal(target, risky)
        if refusal is not None:
            return f"Not changed: {refusal}."
        now = self.ledger.now()
        # The level, its audit row and (down) the suggestions it makes stale, in one transaction: a crash never
        # leaves a level changed with no record of why.
        with self.ledger.write() as s:
            if kind != "promoted":
                s.execute(update(RolloutRow).where(col(RolloutRow.skill) == skill.name,
                                                   col(RolloutRow.status) == "open")
                          .values(status="stale", decided_at=now))
            flag = s.get(KeyValue, AUTONOMY_FLAG + skill.name) or KeyValue(key=AUTONOMY_FLAG + skill.name,
                                                                          value=target, updated_at=now)
            flag.value, flag.updated_at = target, now
            s.add(flag)
            s.add(RolloutRow(skill=skill.name, kind=kind, from_level=level, to_level=target, reason=why[:500],
                             status="done", judged=found.judged, agreed=found.agreed,
                             lower_bound=found.lower_bound, created_at=now, decided_by=user_id, decided_at=now))
        log.info("skill %s %s: %s -> %s (%s)", skill.name, kind, level, target, why)
        if kind == "promoted":
            return f"✅ {skill.name} promoted from {level} to {target}, on {why}."
        return f"📉 {skill.name} demoted from {level} to {target} at once: {why}."

    def _close(self, suggestion_id: int, status: Literal["applied", "stale"], user_id: int) -> bool:
        with self.ledger.write() as s:
            result = s.execute(update(RolloutRow).where(col(RolloutRow.id) == suggestion_id,
                                                        col(RolloutRow.status) == "open")
                               .values(status=status, decided_by=user_id, decided_at=self.ledger.now()))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _mark_message(self, proposal: Proposal, verdict: ProposalVerdict) -> None:
        """Show the owner's answer on the proposal's message, keeping the buttons so it can be changed."""
        if proposal.outbox_id is None or proposal.chat_id is None or proposal.id is None:
            return
        row = self.aria.outbox.get(proposal.outbox_id)
        if row is None or row.message_id is None:
            return
        said = "👍 you would have approved it" if verdict == "up" else "👎 you would not have approved it"
        self.aria.outbox.enqueue(proposal.chat_id, f"{row.text}\n\nYour answer: {said}.", kind="edit",
                                 edit_message_id=row.message_id, actions=judge_actions(proposal.id),
                                 run_id=proposal.run_id, channel=row.channel)


def proposal_text(proposal_id: int, spec: ToolSpec, arguments: dict[str, Any], summary: str,
                  provenance: Provenance | None) -> str:
    """"I would have done X": what, why it did not run, what the run had read, and the question."""
    lines = [f"🕶 Shadow ({spec.skill}): I would have done this, but did not: {summary}"]
    lines += in_full(spec, arguments)
    if provenance is not None and provenance.tainted:
        lines.append(f"⚠️ Proposed {provenance.after()}: content that is not your own words.")
    lines.append(f"Risk: {spec.risk}. Would you have approved it? Reply to this message to add a note. "
                 f"(proposal {proposal_id})")
    return "\n".join(lines)


def _figures(found: Evidence) -> str:
    return (f"{found.agreed} of {found.judged} agreed, Wilson 95% lower bound {found.lower_bound:.2f}")
