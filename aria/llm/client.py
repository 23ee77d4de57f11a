"""Model calls: one budgeted, recorded attempt at a time, retried by one loop, falling back across models.

For each model in the chain: check its circuit, reserve the worst case, call, settle to the reported usage.
Retryable failures (408/409/429/5xx, timeouts, connection errors, malformed bodies) are retried with
max(Retry-After, jittered backoff) but never past the run's deadline; each attempt is its own step row and its own
reservation. When a model gives up, the next one in the chain is tried. The openai client's own retries are off.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from aria.breaker import BreakerBoard
from aria.errors import CircuitOpen, LedgerUnavailable, ProviderError, RetryableProviderError
from aria.ledger import Ledger, Step
from aria.ledger.models import Handling, StepStatus
from aria.llm.budget import Budget, Caps
from aria.llm.pricing import TokenCounts
from aria.llm.tokens import prompt_upper_bound
from aria.retry import RETRYABLE_STATUSES, backoff, parse_retry_after
from aria.sanitize import clean_optional, clean_text


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
                 base_url: str, timeout: float = 60.0, max_attempts: int = 3,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.ledger = ledger
        self.budget = budget
        self.board = board
        self.endpoint = urlsplit(base_url).netloc or "api.openai.com"
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._sleep = sleep

    def breaker_key(self, model: str) -> str:
        """The circuit a model's calls count against."""
        return f"llm:{self.endpoint}:{model}"

    async def chat(self, scope: CallScope, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   models: list[str], *, want_tokens: int, min_tokens: int) -> ChatResult:
        """The first model in `models` that answers; BudgetExhausted propagates, AllModelsFailed at the end."""
        for index, model in enumerate(models):
            has_next = index < len(models) - 1
            if self.board.get(self.breaker_key(model)).state == "open":
                scope.errors.append(f"{model}: circuit open")
                continue
            scope.models_tried.append(model)
            try:
                return await self._with_retries(scope, model, messages, tools, want_tokens, min_tokens, has_next)
            except (ProviderError, CircuitOpen) as exc:
                scope.errors.append(f"{model}: {exc}")
        raise AllModelsFailed("every model failed: " + "; ".join(scope.errors[-len(models):]))

    async def _with_retries(self, scope: CallScope, model: str, messages: list[dict[str, Any]],
                            tools: list[dict[str, Any]], want: int, minimum: int, has_next: bool) -> ChatResult:
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
                last = number >= self.max_attempts
                handling: Handling = "fell_back" if has_next else "handed_off"
                return await self._attempt(scope, model, messages, tools, want, minimum, number,
                                           handling if last else "retried")
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, scope: CallScope, model: str, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]], want: int, minimum: int, number: int,
                       handling: Handling) -> ChatResult:
        breaker = self.board.get(self.breaker_key(model))
        if not breaker.allow():
            raise CircuitOpen(f"circuit open for {model}")
        reservation = self.budget.reserve(scope.run_id, scope.caps, model, prompt_upper_bound(messages, tools),
                                          want=want, minimum=minimum)
        started = time.monotonic()
        seconds_left = max(0.1, scope.deadline - started)
        # Every way out of this block settles or releases the reservation; none leaves it counting forever.
        try:
            body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": reservation.max_tokens}
            if tools:
                body["tools"] = tools
            # The messages are plain JSON already: posting them through the client's generic request method keeps
            # its auth, errors and timeouts but skips re-validating every message of the history on every call.
            response = await self.client.post("/chat/completions", cast_to=ChatCompletion, body=body,
                                              options={"timeout": min(self.timeout, seconds_left)})
            result = self._parse(response, model)
        except asyncio.CancelledError:
            # The request may already be billed: keep the worst case rather than pretend it cost nothing.
            self.budget.release(reservation, billed_unknown=True)
            raise
        except (openai.APIError, ValueError) as exc:
            error = self._classify(exc)
            billed_unknown = isinstance(exc, openai.APITimeoutError | openai.APIResponseValidationError | ValueError)
            step_id = self._step(scope, model, "timeout" if isinstance(exc, openai.APITimeoutError) else "error",
                                 number, started, error=error, detail=str(error))
            self.budget.release(reservation, billed_unknown=billed_unknown, step_id=step_id)
            if isinstance(error, RetryableProviderError):
                breaker.record_failure(str(error), error.retry_after)
            self.ledger.add_failure("llm", error, handling, run_id=scope.run_id, step_id=step_id)
            raise error from None
        except Exception:
            self.budget.release(reservation, billed_unknown=True)  # a bug of ours after a request that may be billed
            raise
        breaker.record_success()
        step = self._step_values(scope, model, "ok", number, started, detail=_summary(result))
        if response.usage is None:
            # No usage reported: the worst case is the only honest figure.
            self.budget.release(reservation, billed_unknown=True, step_id=self.ledger.add_step(Step(**step)))
            return result
        raw = response.usage.model_dump() if hasattr(response.usage, "model_dump") else None
        try:
            cost = self.budget.settle(reservation, result.tokens, raw_usage=raw, step=step)
        except LedgerUnavailable:
            raise  # nothing can be written: the reservation stays as the worst case until the ledger is back
        except Exception:
            self.budget.release(reservation, billed_unknown=True)
            raise
        return ChatResult(result.text, result.tool_calls, result.model, result.finish_reason, result.tokens, cost)

    @staticmethod
    def _parse(response: Any, model: str) -> ChatResult:
        if not getattr(response, "choices", None):
            raise ValueError("response has no choices")
        choice = response.choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise ValueError("response has no message")
        # Text from a model can hold lone surrogates (a split emoji): replaced, so storing and sending it works.
        calls = [
            ToolCallRequest(id=clean_text(c.id or ""), name=clean_text(c.function.name or ""),
                            arguments=clean_text(c.function.arguments or "{}"))
            for c in (message.tool_calls or []) if getattr(c, "function", None) is not None
        ]
        usage = response.usage
        tokens = TokenCounts()
        if usage is not None:
            cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0
            reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None) or 0
            tokens = TokenCounts(prompt=usage.prompt_tokens or 0, completion=usage.completion_tokens or 0,
                                 cached=cached, reasoning=reasoning)
        return ChatResult(text=clean_optional(message.content), tool_calls=calls, model=model,
                          finish_reason=choice.finish_reason or "stop", tokens=tokens, cost_micros=0)

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
        if isinstance(exc, openai.APITimeoutError):
            return RetryableProviderError("the model endpoint timed out")
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


def _summary(result: ChatResult) -> str:
    if result.tool_calls:
        return "tool calls: " + ", ".join(f"{c.name}({c.arguments[:80]})" for c in result.tool_calls)
    return json.dumps((result.text or "")[:200], ensure_ascii=False)
