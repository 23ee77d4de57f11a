"""Suspending a run for the owner's approval, and settling the decision when the run resumes."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Literal

from aria.agent.fence import fence
from aria.agent.outcome import Action, Attempt, Outcome
from aria.agent.state import RunState
from aria.agent.toolrun import ToolRun, ToolRunner
from aria.approvals import Approvals, callback_data
from aria.ledger import Approval, Ledger
from aria.llm.client import ToolCallRequest
from aria.scheduler import PAUSED_FLAG
from aria.skills import ToolContext, ToolSpec

Settled = Literal["approved", "rejected", "expired", "paused", "already"]


def summarise(spec: ToolSpec | None, tool: str, arguments: dict[str, Any]) -> str:
    """A one-line human summary of an action."""
    if spec is not None and spec.command_arg and spec.command_arg in arguments:
        return f"Run `{arguments[spec.command_arg]}` on this host"
    if spec is not None and spec.recipient_arg and spec.recipient_arg in arguments:
        return f"Send a message to {arguments[spec.recipient_arg]}"
    shown = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items())
    return f"{tool}({shown[:160]})"


def in_full(spec: ToolSpec | None, arguments: dict[str, Any]) -> list[str]:
    """The parts of an action a one-line summary may cut or leave out, in full: for a message to a third party
    its recipient and every text it carries, else every argument (a command is already whole in the summary)."""
    if spec is not None and spec.command_arg and spec.command_arg in arguments:
        return []
    if spec is not None and spec.recipient_arg and spec.recipient_arg in arguments:
        lines = [f"To: {arguments[spec.recipient_arg]}"]
        for name in spec.outbound_text_args:
            if arguments.get(name):
                lines.append(f"{name.capitalize()}:\n{arguments[name]}")
        return lines
    return [f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items()]


class Escalation:
    """Creates approvals for calls the gate holds back, and applies decisions exactly once."""

    def __init__(self, ledger: Ledger, approvals: Approvals, runner: ToolRunner) -> None:
        self.ledger = ledger
        self.approvals = approvals
        self.runner = runner

    def suspend(self, state: RunState, call: ToolCallRequest, ran: ToolRun) -> Outcome:
        """Persist the approval and the run's state, then return the message with Approve/Reject/Details."""
        spec = self.runner.skills.tools.get(call.name)
        arguments = ran.arguments or {}
        summary = summarise(spec, call.name, arguments)
        approval = self.approvals.create(
            run_id=state.scope.run_id, tool=call.name, skill=spec.skill if spec else "", arguments=arguments,
            risk=spec.risk if spec else "risky", summary=summary, chat_id=state.request.chat_id,
            resume_state={**state.to_json(), "call": asdict(call)},
        )
        hours = self.approvals.ttl.total_seconds() / 3600
        lines = [f"Approval needed: {summary}"]
        if state.provenance.tainted:  # the owner judges the action knowing who may have asked for it
            lines += [f"⚠️ Requested {state.provenance.after()}: content that is not your own words.",
                      *in_full(spec, arguments)]
        lines += [f"Why: {ran.reason}.", f"This request expires in {hours:g} h. Run {state.scope.run_id}: "
                  f"/trace {state.scope.run_id}"]
        text = "\n".join(lines)
        actions = [Action("Approve", callback_data(approval, "a")), Action("Reject", callback_data(approval, "r")),
                   Action("Details", callback_data(approval, "d"))]
        return Outcome(state.scope.run_id, "awaiting_approval", text, "approval", actions,
                       model=state.model, approval_id=approval.id)

    async def settle(self, approval: Approval, state: RunState, call: ToolCallRequest, ctx: ToolContext) -> Settled:
        """Apply a decided approval to the resumed run: run the action once, or tell the model it was refused."""
        if approval.status == "expired":
            return "expired"
        if approval.status == "rejected":
            self._close_turn(state, call, "REJECTED by the owner. Do not retry this action; answer accordingly.")
            return "rejected"
        if self.ledger.get_flag(PAUSED_FLAG) == "yes":
            if self.approvals.claim_execution(approval.id or 0):
                self.approvals.finish_execution(approval.id or 0, ok=False, result="not run: Aria was paused")
            return "paused"
        if not self.approvals.claim_execution(approval.id or 0):
            return "already"
        ran = await self.runner.run(state.scope, call, ctx, offered=state.tools, provenance=state.provenance,
                                    approved=True)
        self.approvals.finish_execution(approval.id or 0, ok=ran.status == "ok", result=ran.summary)
        what, _, result = ran.summary.partition(" → ")
        state.tried.append(Attempt(what, result, ran.status == "ok"))
        if ran.service:
            state.degraded.append(ran.service)
        state.messages.append({"role": "tool", "tool_call_id": call.id, "content": ran.content})
        return "approved"

    def _close_turn(self, state: RunState, call: ToolCallRequest, told: str) -> None:
        # Every tool call of the turn needs an answer before the model speaks again; the rest are not run.
        state.messages.append({"role": "tool", "tool_call_id": call.id, "content": fence(call.name, told)})
        for other in state.pending:
            state.messages.append({"role": "tool", "tool_call_id": other.id,
                                   "content": fence(other.name, "Not run: an earlier action was rejected.")})
        state.pending.clear()
        state.tried.append(Attempt(call.name, "rejected by the owner", False))
