"""Running the model's tool calls: parse, validate, time-limit, record, and fence the output as data."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, Field

from aria.agent.editor import RULE as EDITOR_RULE
from aria.agent.editor import Review
from aria.agent.fence import fence
from aria.agent.gate import Gate, GateAction, GateDecision
from aria.agent.provenance import UNTRUSTED_STEP, Provenance, url_host
from aria.errors import ConnectorDown, ToolError, ToolInputError, ToolNotOffered, ToolTimeout
from aria.ledger import Ledger, Step
from aria.ledger.models import Handling, StepStatus
from aria.llm.client import CallScope, ToolCallRequest
from aria.skills import SkillSet, ToolContext, ToolSpec

ToolStatus = Literal["ok", "invalid", "unknown", "unoffered", "error", "timeout", "degraded", "blocked", "shadow",
                     "skipped", "approval"]
_HANDLING: dict[ToolStatus, Handling] = {"invalid": "corrected", "degraded": "degraded"}  # else "reported"
_GATED: dict[GateAction, ToolStatus] = {"block": "blocked", "shadow": "shadow", "skip": "skipped"}  # else "approval"


class HandoffArgs(BaseModel):
    """Arguments of the model's "I don't know" tool."""

    reason: str = Field(description="why you cannot answer reliably", max_length=500)
    tried: list[str] = Field(default_factory=list, description="what you tried and how it failed", max_length=10)
    known: str = Field(default="", description="what you know anyway", max_length=1500)


HANDOFF_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "handoff",
        "description": "Say you don't know instead of guessing: why, what you tried, what you know anyway.",
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string"},
                "tried": {"type": "array", "items": {"type": "string"}},
                "known": {"type": "string"},
            },
            "required": ["reason"],
        },
    },
}
LIST_TOOLS_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {"name": "list_tools", "description": "List every available tool; named ones become callable.",
                 "parameters": {"type": "object", "properties": {}}},
}


@dataclass(frozen=True)
class ToolRun:
    """What happened when one tool call was handled."""

    status: ToolStatus
    content: str  # what goes back to the model (already fenced when it is tool output)
    summary: str  # one line for the handoff's "what I tried"
    service: str | None = None  # the unreachable service, when degraded
    arguments: dict[str, Any] | None = None  # validated arguments, when the call waits for approval
    reason: str = ""  # why it was blocked, shadowed, skipped or escalated
    rule: str = ""
    draft: bool = False  # an editor rejected text meant for a third party


def canonical(call: ToolCallRequest) -> str:
    """A stable key for "the same call again" (argument order and spacing ignored)."""
    try:
        args = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except json.JSONDecodeError:
        args = call.arguments
    return f"{call.name}:{args}"


def render_output(value: Any) -> str:
    """Tool results as compact text: models dumped as JSON, strings as they are."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(exclude_none=True)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class ToolRunner:
    """Executes tool calls for a run and records each as a step (and a failure when it fails)."""

    def __init__(self, skills: SkillSet, ledger: Ledger, gate: Gate) -> None:
        self.skills = skills
        self.ledger = ledger
        self.gate = gate
        # The editor's model review of drafts for third parties (ARIA_DRAFT_REVIEW); None when it is off.
        self.reviewer: Callable[[CallScope, str], Awaitable[Review]] | None = None
        # Records what a skill in shadow mode would have done, for the owner to judge (aria.rollout).
        self.on_shadow: Callable[[int, ToolSpec, dict[str, Any], Provenance | None], object] | None = None

    async def run(self, scope: CallScope, call: ToolCallRequest, ctx: ToolContext, *, offered: Collection[str],
                  provenance: Provenance | None = None, approved: bool = False) -> ToolRun:
        """Handle one call; never raises for tool-side problems (they go back to the model as data).

        Only a tool in `offered` (the tools this run sent the model, or list_tools showed it) can run: any other
        call is refused before the gate, so it never reaches the approval queue. Then the gate decides (policy,
        autonomy, pause, and egress after untrusted content) unless the owner already approved this exact call.
        A tool that reads untrusted content adds its source to `provenance` once it has run.
        """
        spec = self.skills.tools.get(call.name)
        if spec is None:
            known = ", ".join(sorted(offered)) or "none"
            return self._refuse(scope, call, "unknown", ToolInputError(f"unknown tool {call.name!r}; offered: {known}"))
        if call.name not in offered:
            return self._refuse(scope, call, "unoffered", ToolNotOffered(
                f"{call.name!r} was not offered for this request, so it was not run; use the offered tools, or call "
                "list_tools first if the owner's request needs another"))
        started = time.monotonic()
        try:
            arguments = _parse_arguments(spec, call.arguments)
        except ToolInputError as exc:
            return self._record(scope, call, spec, "invalid", started, exc, str(exc))
        if not approved:
            data = arguments.model_dump(mode="json")
            decision = self.gate.decide(spec, data, provenance)
            if decision.action in ("run", "approve") and self.reviewer is not None and spec.outbound_text_args:
                decision = await self._reviewed(scope, spec, data, decision)
            if decision.action != "run":
                gated = self._gated(scope, call, spec, decision, data)
                if decision.action == "shadow" and self.on_shadow is not None:
                    self.on_shadow(scope.run_id, spec, data, provenance)
                return gated
        if spec.url_arg is not None and provenance is not None:
            asked = arguments.model_dump(mode="json").get(spec.url_arg)
            ctx = replace(ctx, egress=self._egress_check(provenance, asked))
        try:
            return await self._execute(scope, call, spec, ctx, arguments, started)
        finally:
            if spec.reads is not None and provenance is not None:  # whatever came back, it came from outside
                self.taint(scope, provenance, spec.source(arguments.model_dump(mode="json")))

    def _egress_check(self, provenance: Provenance, asked: object) -> Callable[[str], str | None]:
        """What a tool's redirects may reach: the host it was asked for (named, allowed or approved, since the call
        got this far), and otherwise what the gate's egress rule would let through without the owner."""
        first = url_host(asked) if isinstance(asked, str) else None

        def check(url: str) -> str | None:
            host = url_host(url)
            return None if host is not None and host == first else provenance.unnamed_host(url, self.gate.fetch_allow)

        return check

    def taint(self, scope: CallScope, provenance: Provenance, source: str) -> None:
        """Note that the run read untrusted content from `source`, and record it once as a guard step."""
        if provenance.add(source):
            self.ledger.add_step(Step(
                run_id=scope.run_id, seq=next(scope.seq), kind="guard", name=UNTRUSTED_STEP, status="ok",
                started_at=self.ledger.now(), result=source,
            ))

    async def _reviewed(self, scope: CallScope, spec: ToolSpec, data: dict[str, Any],
                        decision: GateDecision) -> GateDecision:
        """The gate's decision after the editor read the draft (it passed the text rules): unchanged when the editor
        passes it, a draft rejection to revise when it does not, and the owner's approval when no review could be
        made: unreviewed text never goes out on its own."""
        assert self.reviewer is not None
        draft = "\n".join(f"{name}: {data[name]}" for name in spec.outbound_text_args
                          if isinstance(data.get(name), str))
        review = await self.reviewer(scope, draft)
        if review.verdict == "pass":
            return decision
        if review.verdict == "reject":
            return GateDecision("block", review.reason, EDITOR_RULE, draft=True)
        why = f"the editor review could not be done ({review.reason}), so check the text yourself"
        return GateDecision("approve", f"{decision.reason}; {why}" if decision.reason else why, EDITOR_RULE)

    async def _execute(self, scope: CallScope, call: ToolCallRequest, spec: ToolSpec, ctx: ToolContext,
                       arguments: BaseModel, started: float) -> ToolRun:
        # A risky tool leaves a `started` step before it acts: after a crash, that step is how recovery knows the
        # action may have run (and must never be reported as "not run", nor repeated on its own).
        acting = self._step(scope, call, spec, "started", started, result="") if spec.risk != "safe" else None
        try:
            timeout = min(spec.timeout, max(0.1, scope.deadline - started))
            async with asyncio.timeout(timeout):
                value = await spec.call(ctx, arguments)
        except TimeoutError:
            exc = ToolTimeout(f"{call.name} did not finish within {spec.timeout:g}s")
            return self._record(scope, call, spec, "timeout", started, exc, str(exc))
        except ConnectorDown as exc:
            return self._record(scope, call, spec, "degraded", started, exc, str(exc), service=exc.service)
        except ToolError as exc:
            return self._record(scope, call, spec, "error", started, exc, str(exc))
        except Exception as exc:  # noqa: BLE001 - a skill's own bug must reach the model and ledger as a failure
            error = ToolError(f"{call.name} crashed: {type(exc).__name__}: {exc}")
            return self._record(scope, call, spec, "error", started, error, str(error), step_id=acting)
        output = self.ledger.redact(render_output(value)) or ""  # the model sees no secret, in any encoding
        self._step(scope, call, spec, "ok", started, result=output, step_id=acting)
        return ToolRun("ok", fence(call.name, output), f"{call.name} → ok")

    def _record(self, scope: CallScope, call: ToolCallRequest, spec: ToolSpec, status: ToolStatus,
                started: float, error: Exception, message: str, service: str | None = None, *,
                step_id: int | None = None) -> ToolRun:
        step_status: StepStatus = "timeout" if status == "timeout" else "refused" if status == "invalid" else "error"
        step_id = self._step(scope, call, spec, step_status, started, result=message, error=error, step_id=step_id)
        handling = _HANDLING.get(status, "reported")
        self.ledger.add_failure(f"tool:{spec.name}", error, handling, run_id=scope.run_id, step_id=step_id)
        content = fence(call.name, self.ledger.redact(f"ERROR ({type(error).__name__}): {message}") or "")
        return ToolRun(status, content, f"{call.name} → {message[:160]}", service)

    def _gated(self, scope: CallScope, call: ToolCallRequest, spec: ToolSpec, decision: GateDecision,
               arguments: dict[str, Any]) -> ToolRun:
        """Record a call the gate did not let run, and what the model is told about it."""
        status = _GATED.get(decision.action, "approval")
        step_status: StepStatus = "refused" if status == "blocked" else "skipped" if status in ("shadow", "skipped") \
            else "ok"
        self.ledger.add_step(Step(
            run_id=scope.run_id, seq=next(scope.seq), kind="guard", name=spec.name, skill=spec.skill,
            status=step_status, started_at=self.ledger.now(), args=call.arguments[:1000],
            result=f"{decision.action}: {decision.rule + ': ' if decision.rule else ''}{decision.reason}",
        ))
        if status == "blocked":
            self.ledger.add_failure("policy", ToolError(f"{spec.name} blocked by rule {decision.rule}: "
                                                        f"{decision.reason}"), "refused", run_id=scope.run_id)
        told = {
            "blocked": (f"REJECTED by the editor, rule {decision.rule!r}: {decision.reason}. Revise the draft once "
                        "without it, or tell the owner." if decision.draft else
                        f"BLOCKED by policy rule {decision.rule!r}: {decision.reason}. Do not retry; tell the owner."),
            "shadow": "Not executed: this skill is in shadow mode. The proposed action was recorded for the owner.",
            "skipped": f"Not executed: {decision.reason}.",
        }.get(status, "")
        return ToolRun(status, fence(call.name, told) if told else "", f"{call.name} → {status}: {decision.reason}",
                       arguments=arguments, reason=decision.reason, rule=decision.rule, draft=decision.draft)

    def _refuse(self, scope: CallScope, call: ToolCallRequest, status: ToolStatus, error: ToolInputError) -> ToolRun:
        """Record a call to a tool this run may not use (unknown, or not offered) and tell the model so."""
        spec = self.skills.tools.get(call.name)
        error_type = "UnknownTool" if status == "unknown" else type(error).__name__
        step_id = self.ledger.add_step(Step(
            run_id=scope.run_id, seq=next(scope.seq), kind="tool", name=call.name[:64],
            skill=spec.skill if spec else None, status="refused", started_at=self.ledger.now(),
            error_type=error_type, args=call.arguments[:500], result=str(error),
        ))
        self.ledger.add_failure("tool", error, "corrected", run_id=scope.run_id, step_id=step_id)
        what = "unknown tool" if status == "unknown" else "not offered: refused"
        return ToolRun(status, f"ERROR: {error}", f"{call.name} → {what}")

    def _step(self, scope: CallScope, call: ToolCallRequest, spec: ToolSpec, status: StepStatus, started: float, *,
              result: str, error: Exception | None = None, step_id: int | None = None) -> int:
        """Record a tool step, or finish the `started` step `step_id` of a risky tool in place."""
        latency = int((time.monotonic() - started) * 1000)
        error_type = type(error).__name__ if error else None
        if step_id is not None:
            self.ledger.finish_step(step_id, status, latency_ms=latency, error_type=error_type, result=result)
            return step_id
        return self.ledger.add_step(Step(
            run_id=scope.run_id, seq=next(scope.seq), kind="tool", name=spec.name, skill=spec.skill, status=status,
            started_at=self.ledger.now(), latency_ms=latency, error_type=error_type, args=call.arguments[:1000],
            result=result,
        ))


def _parse_arguments(spec: ToolSpec, raw: str) -> BaseModel:
    try:
        data = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ToolInputError(f"arguments for {spec.name} are not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ToolInputError(f"arguments for {spec.name} must be a JSON object")
    return spec.validate(data)

