"""A run's working state: what was asked, the conversation so far, and what the loop has learnt.

It serialises to JSON so a run waiting for an approval can resume in another process after a restart.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aria.agent.outcome import Attempt
from aria.agent.provenance import Provenance
from aria.llm.budget import Caps
from aria.llm.client import CallScope, ToolCallRequest
from aria.skills import SkillSet, ToolSpec


@dataclass(frozen=True)
class Request:
    """A trigger for a run: what was asked, from where."""

    text: str
    trigger: str = "message"
    channel: str = "terminal"
    chat_id: int | None = None
    user_id: int | None = None
    escalate: bool = False  # start on the strong model
    budget_factor: float = 1.0  # "allow more budget once"
    intake_id: int | None = None  # the recorded message this answers: the run takes it, once
    # Untrusted content the request text itself carries (an event's payload), by source: it taints the run.
    sources: tuple[str, ...] = ()


@dataclass
class RunState:
    """What the loop has learnt so far in one run."""

    scope: CallScope
    request: Request
    messages: list[dict[str, Any]]
    tools: dict[str, ToolSpec]
    tried: list[Attempt] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    degraded: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # policy refusals, reported to the owner
    pending: list[ToolCallRequest] = field(default_factory=list)  # calls still to handle from the last turn
    models: list[str] = field(default_factory=list)
    route: str = "cheap"
    escalated: bool = False
    corrections: int = 0
    revisions: int = 0  # drafts the editor sent back
    model_calls: int = 0
    model: str | None = None
    note: str = ""  # told to the owner once, appended to the answer
    cap: str | None = None  # the cap that refused the last call: run, tokens or day
    provenance: Provenance = field(default_factory=Provenance)  # untrusted content read, hosts the owner named
    written: str = ""  # the answer so far, when earlier parts were cut at the output limit and continued

    def to_json(self) -> dict[str, Any]:
        """Everything needed to resume, as JSON-ready data."""
        return {
            "run_id": self.scope.run_id, "caps": asdict(self.scope.caps),
            "seconds_left": max(0.0, self.scope.deadline - time.monotonic()),
            "request": asdict(self.request), "messages": self.messages, "tools": list(self.tools),
            "tried": [asdict(a) for a in self.tried], "seen": sorted(self.seen), "degraded": self.degraded,
            "blocked": self.blocked, "pending": [asdict(c) for c in self.pending], "models": self.models,
            "route": self.route, "escalated": self.escalated, "corrections": self.corrections,
            "revisions": self.revisions,
            "model_calls": self.model_calls, "model": self.model, "note": self.note,
            "provenance": self.provenance.to_json(), "written": self.written,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], skills: SkillSet, next_seq: int) -> RunState:
        """Rebuild a suspended run; its deadline restarts with the seconds it had left."""
        scope = CallScope(run_id=data["run_id"], caps=Caps(**data["caps"]),
                          deadline=time.monotonic() + float(data["seconds_left"]),
                          seq=itertools.count(next_seq))
        known = skills.tools
        request = Request(**{**data["request"], "sources": tuple(data["request"].get("sources", ()))})
        return cls(
            scope=scope, request=request, messages=data["messages"],
            tools={name: known[name] for name in data["tools"] if name in known},
            tried=[Attempt(**a) for a in data["tried"]], seen=set(data["seen"]), degraded=data["degraded"],
            blocked=data["blocked"], pending=[ToolCallRequest(**c) for c in data["pending"]],
            models=data["models"], route=data["route"], escalated=data["escalated"],
            corrections=data["corrections"], revisions=data.get("revisions", 0), model_calls=data["model_calls"],
            model=data["model"],
            note=data["note"], provenance=Provenance.from_json(data.get("provenance")),
            written=data.get("written", ""),
        )
