"""Model calls: one budgeted, recorded attempt at a time, retried by one loop, falling back across models.

For each model in the chain: check its circuit, reserve the worst case, stream the call, settle to the usage the
server reports in its last chunk. A call is judged by its time to first token and its longest silence
(aria.llm.stream), never by its total time. Failures the server refused before working (408/409/429/5xx) and
connection errors or malformed bodies are retried with max(Retry-After, jittered backoff), never past the run's
deadline. A stalled stream is not: it is closed (the server stops) and the next model in the chain is tried, or
the run hands off; sending the same request to the same endpoint again would only queue a second copy behind the
first. Each attempt is its own step row, its own reservation and, when it fails, a WARNING saying why. The openai
client's own retries are off.

Pricing a call that did not finish (a stall, a cancellation, a body cut short, a server that reports no usage):
the bound of the prompt that was sent (aria.llm.tokens) plus the tokens that arrived, marked as estimated.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from aria.breaker import BreakerBoard
from aria.errors import CircuitOpen, LedgerUnavailable, ProviderError, RetryableProviderError
from aria.ledger import Ledger, Step
from aria.ledger.models import Handling, StepStatus
from aria.llm.budget import Budget, Caps
from aria.llm.pricing import TokenCounts
from aria.llm.stream import Received, StreamStalled, TextSink, Windows, stream_chat
from aria.llm.tokens import prompt_upper_bound
from aria.retry import RETRYABLE_STATUSES, backoff, parse_retry_after
from aria.sanitize import clean_optional, clean_text

log = logging.getLogger(__name__)
DEFAULT_WINDOWS = Windows(first_token=120.0, silence=30.0)


@dataclass
class CallScope:
    """The run a call belongs to: its id, caps, deadline and step counter."""

    run_id: int
    caps: Caps
    deadline: float  # time.monotonic() value
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    models_tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ToolCallRequest:
    """A tool call as the model asked for it (arguments still raw JSON text)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatResult:
    """One successful model response."""

    text: str | None
    tool_calls: list[ToolCallRequest]
    model: str
    finish_reason: str
    tokens: TokenCounts
    cost_micros: int


class AllModelsFailed(ProviderError):
    """Every model in the chain failed or had its circuit open."""


class ModelCaller:
    """Calls an OpenAI-compatible endpoint within a run's budget."""

    def __init__(self, client: openai.AsyncOpenAI, ledger: Ledger, budget: Budget, board: BreakerBoard, *,
                 base_url: str, windows: Windows = DEFAULT_WINDOWS, max_attempts: int = 3,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.ledger = ledger
        self.budget = budget
        self.board = board
        self.endpoint = urlsplit(base_url).netloc or "api.openai.com"
        self.windows = windows
        self.max_attempts = max_attempts
        self._sleep = sleep

    def breaker_key(self, model: str) -> str:
        """The circuit a model's calls count against."""
        return f"llm:{self.endpoint}:{model}"

    async def chat(self, scope: CallScope, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   models: list[str], *, want_tokens: int, min_tokens: int,
                   on_text: TextSink | None = None) -> ChatResult:
        """The first model in `models` that answers; BudgetExhausted propagates, AllModelsFailed at the end.
        `on_text` sees the answer so far as it streams in."""
        for index, model in enumerate(models):
            has_next = index < len(models) - 1
            if self.board.get(self.breaker_key(model)).state == "open":
                scope.errors.append(f"{model}: circuit open")
                continue
            scope.models_tried.append(model)
            try:
                return await self._with_retries(scope, model, messages, tools, want_tokens, min_tokens, has_next,
                                                on_text)
            except (ProviderError, CircuitOpen) as exc:
                scope.errors.append(f"{model}: {exc}")
        raise AllModelsFailed("every model failed: " + "; ".join(scope.errors[-len(models):]))

    async def _with_retries(self, scope: CallScope, model: str, messages: list[dict[str, Any]],
                            tools: list[dict[str, Any]], want: int, minimum: int, has_next: bool,
                            on_text: TextSink | None) -> ChatResult:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return backoff(state.attempt_number, getattr(exc, "retry_after", None))

        def stop(state: RetryCallState) -> bool:  # out of attempts, or a retry would pass the deadline
            return (state.attempt_number >= self.max_attempts
                    or time.monotonic() + state.upcoming_sleep >= scope.deadline)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableProviderError), wait=wait, sleep=self._sleep, reraise=True,
            stop=stop,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                return await self._attempt(scope, model, messages, tools, want, minimum, number,
                                           number >= self.max_attempts, "fell_back" if has_next else "handed_off",
                                           on_text)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, scope: CallScope, model: str, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]], want: int, minimum: int, number: int,
                       last: bool, gives_up: Handling, on_text: TextSink | None) -> ChatResult:
        breaker = self.board.get(self.breaker_key(model))
        if not breaker.allow():
            raise CircuitOpen(f"circuit open for {model}")
        reservation = self.budget.reserve(scope.run_id, scope.caps, model, prompt_upper_bound(messages, tools),
                                          want=want, minimum=minimum)
        started = time.monotonic()
        received = Received()
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": reservation.max_tokens}
        if tools:
            body["tools"] = tools
        # Every way out of this block settles or releases the reservation; none leaves it counting forever.
        try:
            # Past the run's deadline no new call starts; one already streaming is judged by its windows alone,
            # and the wait for its first token never runs far past the deadline.
            first = min(self.windows.first_token, max(scope.deadline - started, self.windows.silence))
            await stream_chat(self.client, body, replace(self.windows, first_token=first), received, on_text)
            result = _result(received, model)
        except asyncio.CancelledError:
            # The stream is closed, so the server stops: charge what arrived plus the bound of the prompt.
            self.budget.settle_cut(reservation, received.completion_tokens(), why="cancelled")
            raise
        except (openai.APIError, ValueError, StreamStalled) as exc:
            error = self._classify(exc)
            retried = isinstance(error, RetryableProviderError) and not last
            status: StepStatus = "timeout" if isinstance(exc, StreamStalled | openai.APITimeoutError) else "error"
            step_id = self._step(scope, model, status, number, started, error=error, detail=str(error))
            if isinstance(exc, openai.APIStatusError):
                self.budget.release(reservation, step_id=step_id)  # refused before any work: nothing billed
            else:
                self.budget.settle_cut(reservation, received.completion_tokens(), why=str(error), step_id=step_id)
            breaker.record_failure(str(error), error.retry_after)
            log.warning("model call failed: %s at %s, attempt %d after %.1f s: %s (%s)", model, self.endpoint, number,
                        time.monotonic() - started, error, "retrying" if retried else gives_up.replace("_", " "))
            self.ledger.add_failure("llm", error, "retried" if retried else gives_up, run_id=scope.run_id,
                                    step_id=step_id)
            raise error from None
        except Exception:
            self.budget.release(reservation, billed_unknown=True)  # a bug of ours after a request that may be billed
            raise
        breaker.record_success()
        step = self._step_values(scope, model, "ok", number, started, detail=_summary(result))
        if received.usage is None:
            # No usage reported: what arrived plus the bound of the prompt is the only honest figure.
            cost = self.budget.settle_cut(reservation, received.completion_tokens(), why="no usage reported",
                                          step=step)
            return replace(result, cost_micros=cost)
        raw = received.usage.model_dump() if hasattr(received.usage, "model_dump") else None
        try:
            cost = self.budget.settle(reservation, result.tokens, raw_usage=raw, step=step)
        except LedgerUnavailable:
            raise  # nothing can be written: the reservation stays as the worst case until the ledger is back
        except Exception:
            self.budget.release(reservation, billed_unknown=True)
            raise
        return replace(result, cost_micros=cost)

    @staticmethod
    def _classify(exc: Exception) -> ProviderError:
        if isinstance(exc, openai.APIStatusError):
            headers = exc.response.headers
            retry_after = parse_retry_after(headers.get("retry-after"))
            ms = headers.get("retry-after-ms")
            if retry_after is None and ms:
                retry_after = parse_retry_after(str(float(ms) / 1000))
            kind = RetryableProviderError if exc.status_code in RETRYABLE_STATUSES else ProviderError
            return kind(f"HTTP {exc.status_code} from the model endpoint", status=exc.status_code,
                        retry_after=retry_after)
        if isinstance(exc, StreamStalled):
            # Not resent to the same endpoint at once: it may still be working on the first copy.
            return ProviderError(f"the model endpoint stalled ({exc})")
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError("the model endpoint timed out")
        if isinstance(exc, openai.APIConnectionError):
            return RetryableProviderError("could not connect to the model endpoint")
        return RetryableProviderError(f"malformed response from the model endpoint ({type(exc).__name__})")

    def _step(self, scope: CallScope, model: str, status: StepStatus, number: int, started: float, *,
              error: Exception | None = None, detail: str | None = None) -> int:
        values = self._step_values(scope, model, status, number, started, error=error, detail=detail)
        return self.ledger.add_step(Step(**values))

    def _step_values(self, scope: CallScope, model: str, status: StepStatus, number: int, started: float, *,
                     error: Exception | None = None, detail: str | None = None) -> dict[str, Any]:
        """The step row of one attempt, as column values (settling inserts them with the spend)."""
        return {
            "run_id": scope.run_id, "seq": next(scope.seq), "kind": "llm", "name": model, "status": status,
            "attempt": number - 1, "started_at": self.ledger.now(),
            "latency_ms": int((time.monotonic() - started) * 1000),
            "error_type": type(error).__name__ if error else None, "result": detail,
        }


def _result(received: Received, model: str) -> ChatResult:
    """The streamed response as one result; a stream with neither output nor a finish reason is malformed."""
    if received.finish_reason is None and not received.pieces:
        raise ValueError("the stream ended without a response")
    # Text from a model can hold lone surrogates (a split emoji): replaced, so storing and sending it works.
    calls = [ToolCallRequest(id=clean_text(c.id), name=clean_text(c.name), arguments=clean_text(c.arguments or "{}"))
             for _, c in sorted(received.calls.items()) if c.name]
    tokens = _tokens(received.usage) if received.usage is not None else TokenCounts()
    return ChatResult(text=clean_optional(received.text or None), tool_calls=calls, model=model,
                      finish_reason=received.finish_reason or "stop", tokens=tokens, cost_micros=0)


def _tokens(usage: Any) -> TokenCounts:
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0
    reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None) or 0
    return TokenCounts(prompt=usage.prompt_tokens or 0, completion=usage.completion_tokens or 0, cached=cached,
                       reasoning=reasoning)


def _summary(result: ChatResult) -> str:
    if result.tool_calls:
        return "tool calls: " + ", ".join(f"{c.name}({c.arguments[:80]})" for c in result.tool_calls)
    return json.dumps((result.text or "")[:200], ensure_ascii=False)
