"""The budgeted tool loop. Every stop condition is in `_loop` and `_handle_calls`; every stop produces a message.

Stops: a final answer; the model's `handoff`; a cap (budget, steps, seconds) after one tool-less wrap-up call if it
fits; no progress (the same call repeated); every model failing; invalid tool calls (bad arguments, or a tool this run
was not offered) after one correction; an action that waits for the owner's approval (the run resumes after the
press, in this process or the next).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Connection

from aria.agent.buttons import Buttons
from aria.agent.editor import Editor
from aria.agent.escalation import Escalation
from aria.agent.history import History
from aria.agent.outcome import (
    CUT_NOTE,
    Attempt,
    Handoff,
    Outcome,
    OutcomeStatus,
    StopReason,
    continue_action,
)
from aria.agent.prompts import CONTINUE, WRAP_UP, system_prompt
from aria.agent.provenance import Provenance, named_hosts, owner_texts
from aria.agent.recall import NoteRecall
from aria.agent.state import Request, RunState
from aria.agent.toolrun import HANDOFF_SCHEMA, LIST_TOOLS_SCHEMA, HandoffArgs, ToolRun, ToolRunner, canonical
from aria.approvals import Approvals
from aria.config import Settings
from aria.errors import AlreadyHandled, BudgetExhausted, LedgerUnavailable, PriceUnknown
from aria.knowledge import Knowledge
from aria.ledger import Approval, Ledger, Run, Step
from aria.ledger.reports import format_usd
from aria.llm.budget import Budget, Caps, caps_from_settings
from aria.llm.client import AllModelsFailed, CallScope, ChatResult, ModelCaller, ToolCallRequest
from aria.llm.router import Router
from aria.policy import Policy
from aria.sanitize import clean_text
from aria.skills import SkillSet, ToolContext

log = logging.getLogger(__name__)
class Progress(Protocol):
    """A run's live view for the owner: what it is doing, and the answer as it is written."""

    async def note(self, text: str) -> None:
        """Show the current step."""

    def draft(self, text: str) -> None:
        """The answer so far, as the model streams it; must not block the stream."""
# Writes the message that tells the owner, in the transaction that finishes the run (so neither exists alone).
Reply = Callable[[Connection, Outcome], object]
__all__ = ["Agent", "Progress", "Reply", "Request"]


class Agent:
    """Runs requests through the tool loop, within budget, recording everything."""

    def __init__(self, settings: Settings, ledger: Ledger, skills: SkillSet, budget: Budget,
                 caller: ModelCaller | None, router: Router, *, runner: ToolRunner, approvals: Approvals,
                 policy: Policy, context_factory: Callable[[int, Request], ToolContext],
                 knowledge: Knowledge | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.skills = skills
        self.budget = budget
        self.caller = caller
        self.router = router
        self.tools = runner
        self.policy = policy
        self.history = History(settings.history_tokens)
        self.buttons = Buttons(
            router=lambda: self.router,
            circuit_open=lambda model: caller is not None
            and caller.board.get(caller.breaker_key(model)).state == "open",
            raise_by=lambda: budget.raise_for(caps_from_settings(settings, budget.overrides).micros))
        self.escalation = Escalation(ledger, approvals, runner)
        self._context = context_factory
        self.recall = NoteRecall(knowledge, settings, ledger, runner, caller, router) if knowledge else None
        self.active: set[int] = set()  # runs this process is working on now
        if settings.draft_review and caller is not None:
            runner.reviewer = Editor(caller, router.cheap).review

    def use_router(self, router: Router) -> None:
        """Route with other models from the next request on (the owner's /model); the editor follows the cheap one."""
        self.router = router
        if self.settings.draft_review and self.caller is not None:
            self.tools.reviewer = Editor(self.caller, router.cheap).review

    async def run(self, request: Request, progress: Progress | None = None, *, reply: Reply | None = None) -> Outcome:
        """Handle one request end to end; always returns an Outcome (cancellation marks the run interrupted).
        LedgerUnavailable propagates (nothing was, or can be, recorded), and AlreadyHandled when the recorded
        message it answers was taken by another run (no run is opened)."""
        request = replace(request, text=clean_text(request.text))
        route = self.router.route(request.text, escalate=request.escalate)
        # One transaction opens the run and reads what its first call needs: the chat's history (read before the
        # run exists, so it is not its own) and the day's spend, which decides the models.
        with self.ledger.write_conn() as conn:
            caps = self._caps(request, conn)  # the owner's /budget request cap, read with the rest
            past = self.history.messages(conn, request.chat_id)
            today = self.budget.today()
            day_spent = self.budget.spent_on(conn, today)
            day_cap = self.budget.overrides.day_cap(conn, self.budget.base_day_cap, today)
            notes = self.recall is not None and self.recall.knowledge.has_notes(conn)
            run_id = self.ledger.record_run(conn, {
                "trigger": request.trigger, "channel": request.channel, "chat_id": request.chat_id,
                "user_id": request.user_id, "request": request.text, "route": route, "cap_tokens": caps.tokens,
                "cap_micros": caps.micros, "cap_steps": caps.steps, "cap_seconds": caps.seconds,
            })
            if request.intake_id is not None and not self.ledger.take_intake(conn, request.intake_id, run_id):
                raise AlreadyHandled(f"message {request.intake_id} is answered by another run")  # rolls back
        scope = CallScope(run_id=run_id, caps=caps, deadline=time.monotonic() + caps.seconds)

        async def body() -> Outcome:
            if self.caller is None:
                return self._handoff(scope, [], "no model configured (set OPENAI_API_KEY or OPENAI_BASE_URL)",
                                     "no_model", actions=False)
            state = self._start(request, scope, past, day_spent, day_cap)
            if self.recall is not None and notes:
                await self.recall.attach(state, past)
            return await self._loop(state, progress)

        return await self._guarded(run_id, body, reply)

    async def resume(self, approval: Approval, progress: Progress | None = None, *,
                     reply: Reply | None = None) -> Outcome:
        """Continue a run after its approval was decided (approved, rejected or expired)."""
        assert approval.run_id is not None and approval.resume_state
        saved = json.loads(approval.resume_state)
        run = self.ledger.run(approval.run_id)
        state = RunState.from_json(saved, self.skills, next_seq=(run.steps if run else 0) + 1)
        call = ToolCallRequest(**saved["call"])
        self.ledger.reopen_run(approval.run_id)

        async def body() -> Outcome:
            ctx = self._context(state.scope.run_id, state.request)
            verdict = await self.escalation.settle(approval, state, call, ctx)
            if verdict != "approved":
                return await self._closing_answer(state, verdict)
            self._checkpoint(state)
            return await self._loop(state, progress)

        return await self._guarded(approval.run_id, body, reply)

    async def continue_run(self, run: Run, progress: Progress | None = None, *, reply: Reply | None = None) -> Outcome:
        """Carry on a run a stopped process left unfinished, from its last checkpoint (or from its request when it
        had none), within the same caps: the spend it already made counts against them."""
        assert run.id is not None
        run_id = run.id
        caps = Caps(tokens=run.cap_tokens, micros=run.cap_micros, steps=run.cap_steps, seconds=run.cap_seconds)
        request = Request(text=run.request, trigger=run.trigger, channel=run.channel, chat_id=run.chat_id,
                          user_id=run.user_id)
        self.ledger.reopen_run(run_id)
        past: list[dict[str, Any]] = []
        notes = False
        if run.checkpoint:
            state = RunState.from_json(json.loads(run.checkpoint), self.skills, next_seq=run.steps + 1)
        else:
            with self.ledger.read_conn() as conn:
                past = self.history.messages(conn, request.chat_id, before_run=run_id)
                today = self.budget.today()
                day_spent = self.budget.spent_on(conn, today)
                day_cap = self.budget.overrides.day_cap(conn, self.budget.base_day_cap, today)
                notes = self.recall is not None and self.recall.knowledge.has_notes(conn)
            scope = CallScope(run_id=run_id, caps=caps, deadline=time.monotonic() + caps.seconds,
                              seq=itertools.count(run.steps + 1))
            state = self._start(request, scope, past, day_spent, day_cap)
            state.model_calls = self.ledger.model_calls(run_id)

        async def body() -> Outcome:
            if self.caller is None:
                return self._handoff(state.scope, [], "no model configured (set OPENAI_API_KEY or OPENAI_BASE_URL)",
                                     "no_model", actions=False)
            if not run.checkpoint and self.recall is not None and notes:  # started again from its request
                await self.recall.attach(state, past)
            return await self._loop(state, progress)

        return await self._guarded(run_id, body, reply)

    async def _guarded(self, run_id: int, body: Callable[[], Awaitable[Outcome]], reply: Reply | None) -> Outcome:
        self.active.add(run_id)
        try:
            return await self._finished(run_id, body, reply)
        finally:
            self.active.discard(run_id)

    async def _finished(self, run_id: int, body: Callable[[], Awaitable[Outcome]], reply: Reply | None) -> Outcome:
        try:
            outcome = await body()
        except asyncio.CancelledError:
            # Stopping: the run is left for the next start, which resumes it or offers a Retry.
            self.ledger.finish_run(run_id, "interrupted", stop_reason="stopping",
                                   final_text="Interrupted: Aria was stopping.")
            raise
        except LedgerUnavailable:
            raise  # nothing more can be recorded; the caller tells the owner without the ledger
        except Exception as exc:  # a bug still ends in a message and a failure row (promise 3)
            log.exception("run %s failed", run_id)
            self.ledger.add_failure("agent", exc, "reported", run_id=run_id)
            outcome = Outcome(run_id, "failed", f"Something broke on my side ({type(exc).__name__}); it is "
                              f"recorded as run {run_id} (/trace {run_id}). Nothing was done after the failure.",
                              "error")
        finished = outcome  # bound for the closure: the reply written with the run is this outcome's
        self.ledger.finish_run(run_id, outcome.status, stop_reason=outcome.stop_reason, final_text=outcome.text,
                               answer=outcome.answer, model=outcome.model, checkpoint=outcome.keep_state,
                               then=(lambda conn: reply(conn, finished)) if reply else None)
        return outcome

    def _checkpoint(self, state: RunState) -> None:
        """Save the run's state after a completed step, so a crash resumes from here rather than from the start."""
        self.ledger.save_checkpoint(state.scope.run_id, json.dumps(state.to_json(), ensure_ascii=False))

    def _caps(self, request: Request, conn: Connection) -> Caps:
        caps = caps_from_settings(self.settings, self.budget.overrides, conn)
        factor = max(1.0, request.budget_factor)
        return replace(caps, tokens=int(caps.tokens * factor), micros=int(caps.micros * factor),
                       steps=int(caps.steps * factor))

    async def _loop(self, state: RunState, progress: Progress | None) -> Outcome:
        assert self.caller is not None
        stop = await self._handle_calls(state, progress)  # calls left over from before an approval
        while stop is None:
            if state.model_calls >= state.scope.caps.steps:
                return await self._wrap_up(state, f"it needed more than {state.scope.caps.steps} model calls",
                                           "steps")
            if time.monotonic() >= state.scope.deadline:
                return await self._wrap_up(state, "the time limit for this request ran out", "seconds")
            try:
                result = await self.caller.chat(state.scope, state.messages, self._schemas(state), state.models,
                                                want_tokens=self.settings.max_output_tokens,
                                                min_tokens=self.settings.min_output_tokens,
                                                on_text=progress.draft if progress is not None else None)
            except BudgetExhausted as exc:
                state.cap = exc.cap
                return await self._wrap_up(state, f"the budget ran out ({exc.detail})", "budget")
            except PriceUnknown as exc:
                return self._handoff(state.scope, state.tried, str(exc), "models_failed", actions=False)
            except AllModelsFailed as exc:
                state.tried += [Attempt(f"model {m}", "failed", False) for m in state.scope.models_tried]
                return self._handoff(state.scope, state.tried, f"no model could answer ({exc})", "models_failed",
                                     state=state)
            state.model_calls += 1
            state.model = result.model
            if not result.tool_calls:
                return self._answer(state, result)
            state.messages.append(_assistant_message(result))
            state.pending = list(result.tool_calls)
            stop = await self._handle_calls(state, progress)
        return stop

    def _start(self, request: Request, scope: CallScope, past: list[dict[str, Any]], day_spent: int,
               day_cap: int) -> RunState:
        now = self.ledger.clock.now().astimezone(self.settings.tz)
        system = system_prompt(now, self.settings.timezone, self.policy.prompt_lines())
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}, *past,
                                          {"role": "user", "content": request.text}]
        tools = {spec.name: spec for spec in self.skills.select(request.text)}
        hosts = named_hosts(owner_texts(request.trigger, request.text, past))
        state = RunState(scope=scope, request=request, messages=messages, tools=tools,
                         provenance=Provenance(owner_hosts=hosts))
        for source in request_sources(request):
            self.tools.taint(scope, state.provenance, source)
        state.route = self.router.route(request.text, escalate=request.escalate)
        share = day_spent / day_cap if day_cap else 1.0
        state.models = self.router.chain(state.route, day_share_used=share)
        if share >= self.router.cheap_only_share:
            state.escalated = True  # no escalation past the share: the strong model is off for today
            if self.ledger.claim_flag(f"cheap-only:{self.budget.today()}", str(scope.run_id)):
                state.note = (f"Note: {share:.0%} of today's budget is used, so only {self.router.cheap} answers "
                              "until tomorrow.")
        return state

    def _escalate(self, state: RunState, why: str) -> bool:
        """Move a run from the cheap model to the strong one, once, when the cheap one gave up or misbehaved."""
        if state.escalated or state.route == "strong" or self.router.strong == self.router.cheap:
            return False
        state.escalated, state.route = True, "strong"
        state.models = self.router.chain("strong")
        state.corrections = 0
        with self.ledger.write_conn() as conn:
            self.ledger.update_row(conn, Run, state.scope.run_id, {"route": "strong"})
        self.ledger.add_step(Step(run_id=state.scope.run_id, seq=next(state.scope.seq), kind="guard",
                                  name="escalate", status="ok", started_at=self.ledger.now(),
                                  result=f"to {self.router.strong}: {why}"))
        return True

    def _schemas(self, state: RunState) -> list[dict[str, Any]]:
        return [HANDOFF_SCHEMA, LIST_TOOLS_SCHEMA, *(spec.schema() for spec in state.tools.values())]

    async def _handle_calls(self, state: RunState, progress: Progress | None) -> Outcome | None:
        while state.pending:
            call = state.pending.pop(0)
            if call.name == "handoff":
                if self._escalate(state, "the cheap model handed off"):
                    state.messages.append(_tool_message(call, "Escalated to a stronger model: try again."))
                    state.pending.clear()
                    return None
                return self._model_handoff(state, call)
            key = canonical(call)
            if key in state.seen:
                return self._handoff(state.scope, state.tried, f"no progress: {call.name} was asked for again with "
                                     "the same arguments", "no_progress", state=state)
            state.seen.add(key)
            if call.name == "list_tools":
                state.tools = dict(self.skills.tools)
                content = "\n".join(f"{s.name}: {s.description.splitlines()[0]}" for s in state.tools.values())
                state.messages.append(_tool_message(call, content or "no tools installed"))
                continue
            if progress is not None:
                await progress.note(f"Working: {call.name}…")
            ran = await self.tools.run(state.scope, call, self._context(state.scope.run_id, state.request),
                                       offered=state.tools, provenance=state.provenance)
            if ran.status == "approval":
                return self.escalation.suspend(state, call, ran)
            stop = self._absorb(state, call, ran)
            if stop is not None:
                return stop
            self._checkpoint(state)
        return None

    def _absorb(self, state: RunState, call: ToolCallRequest, ran: ToolRun) -> Outcome | None:
        """Learn from one tool result; stop when the model keeps sending invalid arguments."""
        what, _, result_text = ran.summary.partition(" → ")
        state.tried.append(Attempt(what, result_text, ran.status == "ok"))
        if ran.service:
            state.degraded.append(ran.service)
        if ran.status == "blocked" and ran.draft:
            state.revisions += 1
            if state.revisions > 1:
                return self._handoff(state.scope, state.tried, f"the draft for {call.name} was rejected twice by the "
                                     f"editor (rule '{ran.rule}': {ran.reason}); it was not sent", "handoff",
                                     actions=False)
            state.blocked.append(f"a draft for {call.name} was sent back by rule '{ran.rule}': {ran.reason}")
        elif ran.status == "blocked":
            state.blocked.append(f"{call.name} was blocked by policy rule '{ran.rule}': {ran.reason}")
        if ran.status in ("invalid", "unknown", "unoffered"):
            state.corrections += 1
            if state.corrections > 1 and not self._escalate(state, "invalid tool calls"):
                return self._handoff(state.scope, state.tried, "the model kept sending invalid tool calls "
                                     "after one correction", "invalid_arguments", state=state)
        state.messages.append(_tool_message(call, ran.content))
        return None

    def _answer(self, state: RunState, result: ChatResult, status: OutcomeStatus = "ok",
                stop: StopReason = "answer") -> Outcome:
        cut = result.finish_reason == "length" and status == "ok"
        part = (result.text or "").rstrip()
        if not part.strip():
            why = ("the model used its whole output limit before writing an answer (ARIA_MAX_OUTPUT_TOKENS)" if cut
                   else "the model returned an empty answer")
            return self._handoff(state.scope, state.tried, why, "models_failed", state=state)
        # What later history recalls: the whole answer, however many parts it took.
        answer = (state.written + part) if state.written else part.strip()
        text = f"…{part.lstrip()}" if state.written else part.strip()  # a continued part picks up mid-answer
        keep, actions = None, []
        if cut:
            keep, actions = self._keep_for_continue(state, part, answer), [continue_action(state.scope.run_id)]
            text, stop = f"{text}\n\n{CUT_NOTE}", "length"
        if state.degraded:
            services = ", ".join(sorted(set(state.degraded)))
            text = f"I couldn't reach {services}; here is what I know anyway:\n\n{text}"
            status = "degraded" if status == "ok" else status
        if state.blocked:
            text += "\n\n" + "\n".join(f"⛔ {line}" for line in state.blocked)
        if state.note:
            text = f"{text}\n\n{state.note}"
        return Outcome(state.scope.run_id, status, text, stop, actions, model=result.model, answer=answer,
                       keep_state=keep)

    @staticmethod
    def _keep_for_continue(state: RunState, part: str, answer: str) -> str:
        """The run's state after a cut answer, ready for Continue: the partial answer, then the request to go on.
        What was told with this part (notes, refusals, unreachable services) is not told again. Waiting for the
        press is not working time: the continuation gets the run's whole time cap again."""
        saved = state.to_json()
        saved["messages"] = [*state.messages, {"role": "assistant", "content": part},
                             {"role": "user", "content": CONTINUE}]
        saved.update(written=answer, seconds_left=state.scope.caps.seconds, note="", degraded=[], blocked=[])
        return json.dumps(saved, ensure_ascii=False)

    async def _closing_answer(self, state: RunState, verdict: str) -> Outcome:
        """After a rejection (or expiry) the run takes no further tool steps: one tool-less answer, or a template."""
        if verdict == "expired":
            return Outcome(state.scope.run_id, "rejected", "The approval request expired, so nothing was run and "
                           "this request is closed.", "expired")
        if verdict == "paused":
            return Outcome(state.scope.run_id, "skipped", "Aria is paused, so the approved action was not run. "
                           "Use /resume, then ask again.", "paused")
        assert self.caller is not None
        try:
            result = await self.caller.chat(state.scope, state.messages, [], state.models[:1],
                                            want_tokens=min(400, self.settings.max_output_tokens),
                                            min_tokens=self.settings.min_output_tokens)
        except (BudgetExhausted, AllModelsFailed, PriceUnknown):
            return Outcome(state.scope.run_id, "rejected", "You rejected the action, so it did not run.", "rejected")
        return self._answer(state, result, status="rejected", stop="rejected")

    def _model_handoff(self, state: RunState, call: ToolCallRequest) -> Outcome:
        try:
            args = HandoffArgs.model_validate(json.loads(call.arguments or "{}"))
        except (json.JSONDecodeError, ValidationError):
            args = HandoffArgs(reason="the model could not answer reliably")
        tried = state.tried + [Attempt(t, "see above", False) for t in args.tried]
        return self._handoff(state.scope, tried, args.reason.rstrip("."), "handoff", known=args.known,
                             model=state.model, state=state)

    async def _wrap_up(self, state: RunState, reason: str, stop: StopReason) -> Outcome:
        """One tool-less call to summarise what was found, if its reservation fits; else a templated handoff."""
        assert self.caller is not None
        messages = [*state.messages, {"role": "user", "content": WRAP_UP}]
        # Only money is "budget exhausted"; a step or time cap is a handoff with its own stop reason.
        status: OutcomeStatus = "budget_exhausted" if stop == "budget" else "handoff"
        try:
            result = await self.caller.chat(state.scope, messages, [], state.models[:1],
                                            want_tokens=min(400, self.settings.max_output_tokens),
                                            min_tokens=self.settings.min_output_tokens)
        except (BudgetExhausted, AllModelsFailed, PriceUnknown):
            return self._handoff(state.scope, state.tried, reason, stop, status=status, state=state)
        return self._handoff(state.scope, state.tried, reason, stop, known=result.text or "",
                             status=status, model=result.model, state=state)

    def _handoff(self, scope: CallScope, tried: list[Attempt], reason: str, stop: StopReason, *, known: str = "",
                 status: OutcomeStatus = "handoff", actions: bool = True, model: str | None = None,
                 state: RunState | None = None) -> Outcome:
        handoff = Handoff(reason=reason, tried=tried, known=known, budget_line=self._budget_line(scope))
        buttons = self.buttons.offer(scope, stop, state) if actions else []
        return Outcome(scope.run_id, status, handoff.render(), stop, buttons, model=model,
                       answer=handoff.render(footer=False))

    def _budget_line(self, scope: CallScope) -> str:
        run = self.ledger.run(scope.run_id)
        if run is None:
            return ""
        calls = self.ledger.model_calls(scope.run_id)
        return (f"Budget used: {format_usd(run.cost_micros)} of {format_usd(scope.caps.micros)}, "
                f"{calls} model call{'s' if calls != 1 else ''} of {scope.caps.steps}. Run {scope.run_id}: "
                f"/trace {scope.run_id}")


_UNTRUSTED_TRIGGERS = {"event": "an event's payload", "forward": "a forwarded message", "document": "a document",
                       "photo": "a photo caption"}


def request_sources(request: Request) -> tuple[str, ...]:
    """The untrusted content a request carries: an event's payload, a forwarded message or a document is someone
    else's words, not the owner's."""
    if request.sources or request.trigger not in _UNTRUSTED_TRIGGERS:
        return request.sources
    # A run rebuilt from its row after a restart, without the original source's name.
    what = _UNTRUSTED_TRIGGERS[request.trigger]
    return (f"{what} ({request.channel})",)


def _assistant_message(result: ChatResult) -> dict[str, Any]:
    return {
        "role": "assistant", "content": result.text or None,
        "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                       for c in result.tool_calls],
    }


def _tool_message(call: ToolCallRequest, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": content}

