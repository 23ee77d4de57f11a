"""One streamed chat completion, judged by time to first token and by the longest silence between chunks.

A slow model that keeps producing is never cut off for its total time; one that says nothing for
`first_token` seconds, or falls silent for `silence` seconds mid-answer, is. Either way the stream is closed (the
connection is dropped, so the server stops generating), and what arrived so far is kept for pricing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncStream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk

from aria.llm.tokens import estimate_tokens

TextSink = Callable[[str], None]  # receives the answer so far after each piece; must not block


class StreamStalled(Exception):
    """No first token in time, or a silence too long mid-stream: the call is given up, not resent."""

    def __init__(self, message: str, received: Received) -> None:
        super().__init__(message)
        self.received = received


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Received:
    """What a stream delivered: the text, tool calls, finish reason and usage, merged from its chunks."""

    text: str = ""
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None  # the final chunk's usage, when the server reports it
    pieces: int = 0  # chunks that carried generated output (text, reasoning or tool-call arguments)
    reasoning: str = ""

    def add(self, chunk: ChatCompletionChunk) -> bool:
        """Merge one chunk; True when it carried generated output."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        produced = False
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta.content:
                self.text += delta.content
                produced = True
            extra = getattr(delta, "reasoning_content", None)  # llama.cpp, vLLM and DeepSeek stream their thinking
            if isinstance(extra, str) and extra:
                self.reasoning += extra
                produced = True
            for call in delta.tool_calls or []:
                merged = self.calls.setdefault(call.index, _Call())
                merged.id = call.id or merged.id
                if call.function is not None:
                    merged.name += call.function.name or ""
                    merged.arguments += call.function.arguments or ""
                produced = True
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        self.pieces += produced
        return produced

    def add_completion(self, payload: object) -> None:
        """Take a whole (non-streamed) completion: some OpenAI-compatible servers ignore `stream` and answer JSON."""
        choices = payload.get("choices") if isinstance(payload, dict) else None
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        message = first.get("message") if first is not None else None
        if first is None or not isinstance(message, dict):
            raise ValueError("response has no message")
        content = message.get("content")
        if isinstance(content, str) and content:
            self.text, self.pieces = content, self.pieces + 1
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                self.calls[index] = _Call(str(call.get("id") or ""), str(function.get("name") or ""),
                                          str(function.get("arguments") or ""))
                self.pieces += 1
        self.finish_reason = str(first.get("finish_reason") or "stop")
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if isinstance(usage, dict):
            self.usage = CompletionUsage.model_validate(usage)

    def completion_tokens(self) -> int:
        """Tokens generated so far, for a stream that ended without usage: a server sends about one token per
        chunk, so the count of chunks is a floor; the byte-based estimate covers servers that batch tokens."""
        generated = self.text + self.reasoning + "".join(c.name + c.arguments for c in self.calls.values())
        return max(self.pieces, estimate_tokens(generated) if generated else 0)


@dataclass(frozen=True)
class Windows:
    """How long a stream may stay quiet: before its first token, and between chunks after it."""

    first_token: float
    silence: float

    @property
    def backstop(self) -> float:
        """The HTTP client's own timeout: it only backs the windows up (it applies to each read, not the call)."""
        return max(self.first_token, self.silence) + 5.0


async def stream_chat(client: openai.AsyncOpenAI, body: dict[str, Any], windows: Windows, received: Received,
                      on_text: TextSink | None = None) -> Received:
    """Post a streamed completion and collect it into `received` (which keeps what arrived if the call is
    cancelled). Raises StreamStalled when a window passes, openai errors as the client raises them; the stream is
    closed on every way out."""
    loop = asyncio.get_running_loop()
    stream: AsyncStream[ChatCompletionChunk] | None = None
    waiting_for = "first token"
    try:
        async with asyncio.timeout(windows.first_token) as window:
            # The messages are plain JSON already: the client's generic post keeps its auth, errors and
            # connection handling but skips re-validating the whole history on every call.
            stream = await client.post("/chat/completions", cast_to=ChatCompletionChunk,
                                       body={**body, "stream": True, "stream_options": {"include_usage": True}},
                                       options={"timeout": windows.backstop}, stream=True,
                                       stream_cls=AsyncStream[ChatCompletionChunk])
            if "json" in stream.response.headers.get("content-type", ""):
                received.add_completion(json.loads(await stream.response.aread()))
                return received
            async for chunk in stream:
                if received.add(chunk):
                    waiting_for = "next chunk"
                    window.reschedule(loop.time() + windows.silence)
                    if on_text is not None and chunk.choices and chunk.choices[0].delta.content:
                        on_text(received.text)
    except TimeoutError:
        if waiting_for == "first token":
            why = f"no first token within {windows.first_token:g} s"
        else:
            why = f"silent for {windows.silence:g} s after {received.pieces} chunks"
        raise StreamStalled(why, received) from None
    finally:
        if stream is not None:
            await asyncio.shield(stream.close())  # dropping the connection stops the server generating
    return received
