"""What a run ends with: the message the owner gets, its status, and the buttons that can help."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal[
    "answer", "handoff", "budget", "steps", "seconds", "no_progress", "models_failed", "invalid_arguments",
    "no_model", "error", "interrupted", "approval", "rejected", "expired", "paused", "length",
]
OutcomeStatus = Literal[
    "ok", "degraded", "handoff", "budget_exhausted", "failed", "interrupted", "awaiting_approval", "rejected",
    "skipped",
]


@dataclass(frozen=True)
class Action:
    """A button under the final message: a label and the callback data naming what it does."""

    label: str
    data: str


@dataclass(frozen=True)
class Outcome:
    """The end of a run."""

    run_id: int | None
    status: OutcomeStatus
    text: str
    stop_reason: StopReason
    actions: list[Action] = field(default_factory=list)
    model: str | None = None
    approval_id: int | None = None  # set when the run waits for the owner's decision
    # What goes back to the model as this turn's answer in later history: the model's own words (or the bare handoff),
    # without what Aria adds for the owner (footers, notes, policy lines, prefixes, buttons). None: nothing to recall.
    answer: str | None = None
    # The run's state kept after it ends, so a Continue press can carry it on (an answer cut at the output limit).
    keep_state: str | None = None


@dataclass
class Attempt:
    """One thing the run tried, for the handoff's "what I tried" list."""

    what: str
    result: str
    ok: bool


@dataclass(frozen=True)
class Handoff:
    """An explicit "I don't know": why, what was tried, what is known anyway."""

    reason: str
    tried: list[Attempt]
    known: str = ""
    budget_line: str = ""

    def render(self, *, footer: bool = True) -> str:
        """The owner-facing text, short enough for a phone; without its budget footer for the model's history."""
        lines = [f"I don't know: {self.reason}."]
        if self.tried:
            lines.append("What I tried:")
            lines += [f"• {a.what} → {a.result}" for a in self.tried[-6:]]
        if self.known.strip():
            lines.append(f"What I know anyway: {self.known.strip()}")
        if self.budget_line and footer:
            lines.append(self.budget_line)
        return "\n".join(lines)


CUT_NOTE = "✂️ Cut short at the output limit."


def continue_action(run_id: int) -> Action:
    """The button that carries on an answer cut at the output limit, within the same run's caps."""
    return Action("Continue", f"continue:{run_id}")
