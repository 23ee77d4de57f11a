"""A scripted OpenAI-compatible chat-completions server over real HTTP (`aria eval`'s model, and the tests' fake).

Point ``openai.AsyncOpenAI(base_url=fake.base_url, api_key=...)`` at it.  Each
request takes the first queued script item whose model matches (or that was
queued for any model); with nothing queued it answers ``default_text``.
Usage numbers are derived from the request and the reply so that budget code
sees plausible, consistent values, and ``max_tokens``/``max_completion_tokens``
cap the billed completion exactly like a real provider.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aria.evals.serving import ServedFake, ServerThread, parse_multipart, wait_until, wait_until_sync

__all__ = [
    "FakeOpenAI",
    "Request",
    "ToolCallSpec",
    "estimate_completion_tokens",
    "estimate_prompt_tokens",
]

JSON = dict[str, Any]
ToolCallSpec = dict[str, Any]  # {"name": str, "arguments": dict | str, "id": str (optional)}

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")

_ERROR_BODIES: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "permission_denied", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "timeout", None),
    409: ("Conflict.", "invalid_request_error", None),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def error_body(status: int, message: str | None = None, code: str | None = None, param: str | None = None) -> JSON:
    """An OpenAI-style ``{"error": {...}}`` body for ``status``."""
    default_message, kind, default_code = _ERROR_BODIES.get(status, ("Error.", "api_error", None))
    return {
        "error": {
            "message": message or default_message,
            "type": kind,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def estimate_prompt_tokens(body: JSON) -> int:
    """ceil(UTF-8 bytes of the JSON of messages + tools / 4), at least 1."""
    payload = list(body.get("messages") or []) + list(body.get("tools") or [])
    encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return max(1, math.ceil(_utf8_len(encoded) / 4))


def estimate_completion_tokens(text: str | None, tool_calls: Sequence[JSON] = ()) -> int:
    """ceil(UTF-8 bytes of text + each tool call's name and arguments / 4), at least 1."""
    size = _utf8_len(text or "")
    for call in tool_calls:
        function = call.get("function", call)
        size += _utf8_len(str(function.get("name", ""))) + _utf8_len(str(function.get("arguments", "")))
    return max(1, math.ceil(size / 4))


def _pieces(text: str) -> list[str]:
    """Text in the pieces a model streams it in: about a word each, whitespace kept."""
    return re.findall(r"\s*\S+|\s+", text)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[: max(max_bytes, 0)].decode("utf-8", "ignore")


@dataclass
class Request:
    """One HTTP request received by the fake."""

    model: str | None
    body: JSON
    headers: dict[str, str]
    at: float
    outcome: str
    status: int = 200
    response: JSON | None = None
    path: str = "/v1/chat/completions"
    stream: bool = False
    closed_early: bool = False  # the client went away before the stream was complete

    def __repr__(self) -> str:
        return f"Request({self.path} model={self.model!r} {self.status} {self.outcome})"


@dataclass
class _Script:
    kind: str  # text | tool_calls | error | hang | stall | malformed | raw
    model: str | None
    text: str | None = None
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    usage: JSON | None = None
    finish_reason: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    seconds: float = 0.0
    stall_after: int = 0  # stall: content pieces streamed before the silence


def _retry_headers(retry_after: float | str | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    if isinstance(retry_after, float) and retry_after.is_integer():
        retry_after = int(retry_after)
    return {"retry-after": str(retry_after)}


class FakeOpenAI(ServedFake):
    """OpenAI-compatible server with a FIFO script. Thread-safe."""

    def __init__(self, api_key: str | None = None, models: Sequence[str] = DEFAULT_MODELS) -> None:
        self.api_key = api_key
        self.models: list[str] = list(models)
        self.default_text = "OK."
        self.requests: list[Request] = []
        self._lock = threading.RLock()
        self._script: list[_Script] = []
        self._transcripts: list[_Script] = []  # answers of /audio/transcriptions, apart from the chat script
        self.default_transcript = "Transcribed."
        self._model_faults: dict[str, tuple[int, float | str | None]] = {}
        self._counter = 0
        # Seconds per generated piece (about a word): a slow model, for streamed and non-streamed replies alike.
        self.token_delay = 0.0
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._get_model, methods=["GET"]),
            ]
        )
        app.add_exception_handler(404, self._not_found)
        app.add_exception_handler(405, self._not_found)
        self.server = ServerThread(app, name="fake-openai")


    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"{self.server.url}/v1"

    # -- scripting ----------------------------------------------------------

    def enqueue_text(
        self,
        text: str,
        usage: JSON | None = None,
        model: str | None = None,
        finish_reason: str = "stop",
    ) -> None:
        self._push(_Script("text", model, text=text, usage=usage, finish_reason=finish_reason))

    def enqueue_tool_calls(
        self,
        calls: Sequence[ToolCallSpec],
        text: str | None = None,
        usage: JSON | None = None,
        model: str | None = None,
    ) -> None:
        """Queue an assistant turn calling tools.

        ``arguments`` given as a dict is JSON-encoded; a str is sent verbatim
        (so malformed JSON can be scripted).
        """
        specs = [dict(call) for call in calls]
        for spec in specs:
            if "name" not in spec or "arguments" not in spec:
                raise ValueError(f"tool call needs 'name' and 'arguments': {spec!r}")
        self._push(_Script("tool_calls", model, text=text, tool_calls=specs, usage=usage, finish_reason="tool_calls"))

    def enqueue_tool_call(
        self,
        name: str,
        arguments: JSON | str,
        *,
        id: str | None = None,
        text: str | None = None,
        usage: JSON | None = None,
        model: str | None = None,
    ) -> None:
        spec: ToolCallSpec = {"name": name, "arguments": arguments}
        if id is not None:
            spec["id"] = id
        self.enqueue_tool_calls([spec], text=text, usage=usage, model=model)

    def enqueue_error(
        self,
        status: int,
        retry_after: float | str | None = None,
        body: JSON | bytes | str | None = None,
        model: str | None = None,
    ) -> None:
        """Queue an HTTP error; ``retry_after`` (seconds or an HTTP-date) becomes Retry-After."""
        if body is None:
            raw = json.dumps(error_body(status)).encode()
        elif isinstance(body, dict):
            raw = json.dumps(body).encode()
        else:
            raw = body.encode() if isinstance(body, str) else body
        headers = {"content-type": "application/json", **_retry_headers(retry_after)}
        self._push(_Script("error", model, status=status, body=raw, headers=headers))

    def enqueue_hang(self, seconds: float, model: str | None = None) -> None:
        """Hold the response for ``seconds``, then answer ``default_text``."""
        self._push(_Script("hang", model, seconds=seconds))

    def enqueue_stall(self, text: str, after: int, seconds: float, model: str | None = None) -> None:
        """Stream ``after`` pieces of ``text``, fall silent for ``seconds``, then stream the rest (a model that
        stops producing mid-answer). A non-streamed request just waits ``seconds`` before the whole reply."""
        self._push(_Script("stall", model, text=text, seconds=seconds, stall_after=after))

    def enqueue_malformed(self, model: str | None = None) -> None:
        """A 200 response whose JSON body is truncated."""
        body = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess'
        self._push(_Script("malformed", model, status=200, body=body, headers={"content-type": "application/json"}))

    def enqueue_raw(
        self,
        status: int,
        body_bytes: bytes,
        headers: dict[str, str] | None = None,
        model: str | None = None,
    ) -> None:
        self._push(_Script("raw", model, status=status, body=body_bytes, headers=dict(headers or {})))

    def fail_model(self, model: str, status: int = 500, retry_after: float | str | None = None) -> None:
        """Every request for ``model`` fails until ``clear_model_faults()``; queue untouched."""
        with self._lock:
            self._model_faults[model] = (status, retry_after)

    def clear_model_faults(self) -> None:
        with self._lock:
            self._model_faults.clear()

    def enqueue_transcription(self, text: str, seconds: float | None = None, *, status: int = 200) -> None:
        """Queue the answer to the next transcription: ``text``, billed for ``seconds`` of audio (a ``duration``
        usage, as whisper-1 reports it; None reports no usage); a ``status`` other than 200 answers that error."""
        usage = {"type": "duration", "seconds": seconds} if seconds is not None else None
        body = json.dumps(error_body(status)).encode() if status != 200 else None
        with self._lock:
            self._transcripts.append(_Script("transcript" if status == 200 else "error", None, text=text,
                                             usage=usage, status=status, body=body))

    @property
    def transcriptions(self) -> list[Request]:
        """Transcription requests; each body holds the form fields and ``file_name``/``file_bytes``."""
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/audio/transcriptions"]

    def clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    @property
    def queued(self) -> int:
        """Script items not yet consumed."""
        with self._lock:
            return len(self._script)

    def _push(self, item: _Script) -> None:
        with self._lock:
            self._script.append(item)
            if item.model and item.model not in self.models:
                self.models.append(item.model)

    def _take(self, model: str) -> _Script | None:
        with self._lock:
            for index, item in enumerate(self._script):
                if item.model is None or item.model == model:
                    return self._script.pop(index)
        return None

    # -- recording helpers --------------------------------------------------

    def requests_for(self, model: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    @property
    def completions(self) -> list[Request]:
        """Chat-completion requests only (no /models lookups)."""
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def last_request(self) -> Request | None:
        completions = self.completions
        return completions[-1] if completions else None

    async def wait_for_requests(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - a plain deadline, not a cancel scope
        predicate: Callable[[Request], bool] | None = None,
    ) -> list[Request]:
        """Wait until ``count`` chat-completion requests (matching ``predicate``) arrived."""
        return await wait_until(
            self._matcher(predicate), count=count, timeout=timeout, what="chat completion", recent=self._recent
        )

    def wait_for_requests_sync(
        self,
        count: int = 1,
        timeout: float = 5.0,
        predicate: Callable[[Request], bool] | None = None,
    ) -> list[Request]:
        return wait_until_sync(
            self._matcher(predicate), count=count, timeout=timeout, what="chat completion", recent=self._recent
        )

    def _matcher(self, predicate: Callable[[Request], bool] | None) -> Callable[[], list[Request]]:
        return lambda: [r for r in self.completions if predicate is None or predicate(r)]

    def _recent(self) -> Sequence[Request]:
        with self._lock:
            return list(self.requests[-20:])

    # -- HTTP layer ---------------------------------------------------------

    async def _not_found(self, request: HTTPRequest, exc: Exception) -> Response:
        body = error_body(404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url")
        return JSONResponse(body, status_code=404)

    def _record(
        self, request: HTTPRequest, model: str | None, body: JSON, outcome: str, status: int, response: JSON | None
    ) -> Request:
        entry = Request(
            model=model,
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            at=time.time(),
            outcome=outcome,
            status=status,
            response=response,
            path=request.url.path,
        )
        with self._lock:
            self.requests.append(entry)
        return entry

    def _auth_error(self, request: HTTPRequest) -> Response | None:
        if self.api_key is None:
            return None
        header = request.headers.get("authorization", "")
        if header == f"Bearer {self.api_key}":
            return None
        given = header.removeprefix("Bearer ").strip()
        shown = f"{given[:3]}***{given[-2:]}" if len(given) > 5 else "***"
        message = f"Incorrect API key provided: {shown}." if given else "You didn't provide an API key."
        return JSONResponse(error_body(401, message), status_code=401)

    async def _list_models(self, request: HTTPRequest) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            self._record(request, None, {}, "auth_failed", 401, None)
            return denied
        with self._lock:
            models = list(self.models)
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"} for m in models]
        body: JSON = {"object": "list", "data": data}
        self._record(request, None, {}, "models", 200, body)
        return JSONResponse(body)

    async def _get_model(self, request: HTTPRequest) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        model = request.path_params["model"]
        with self._lock:
            known = model in self.models
        if not known:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return JSONResponse(error_body(404, message), status_code=404)
        return JSONResponse({"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "fake"})

    async def _chat_completions(self, request: HTTPRequest) -> Response:
        denied = self._auth_error(request)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if denied is not None:
            self._record(request, None, body if isinstance(body, dict) else {}, "auth_failed", 401, None)
            return denied
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            self._record(request, None, {}, "bad_request", 400, None)
            return JSONResponse(error_body(400, message), status_code=400)
        model = body.get("model")
        problem = self._validate(body)
        if problem is not None:
            message, param = problem
            self._record(request, model, body, "bad_request", 400, None)
            return JSONResponse(error_body(400, message, param=param), status_code=400)
        model = str(body["model"])  # _validate made sure it is a non-empty string

        with self._lock:
            sticky = self._model_faults.get(model)
        if sticky is not None:
            status, retry_after = sticky
            self._record(request, model, body, f"model_fault:{status}", status, None)
            headers = _retry_headers(retry_after)
            return JSONResponse(error_body(status), status_code=status, headers=headers)

        item = self._take(model)
        if item is None:
            item = _Script("default", None, text=self.default_text)
        if body.get("stream") and item.kind not in ("error", "malformed", "raw"):
            return self._stream(request, model, body, item)
        if item.kind == "stall":
            await asyncio.sleep(item.seconds)
        if item.kind == "hang":
            # status 0 until answered; down()/stop() cancel the sleep, and the
            # client has usually timed out long before the reply is sent.
            entry = self._record(request, model, body, "hang", 0, None)
            await asyncio.sleep(item.seconds)
            reply = self._completion(body, _Script("default", None, text=self.default_text))
            entry.status, entry.response = 200, reply
            return JSONResponse(reply)
        if item.kind in ("error", "malformed", "raw"):
            self._record(request, model, body, f"{item.kind}:{item.status}", item.status, None)
            return Response(item.body or b"", status_code=item.status, headers=item.headers)
        reply = self._completion(body, item)
        if self.token_delay:
            await asyncio.sleep(self.token_delay * len(_pieces(reply["choices"][0]["message"]["content"] or "")))
        self._record(request, model, body, item.kind, 200, reply)
        return JSONResponse(reply)

    def _stream(self, request: HTTPRequest, model: str | None, body: JSON, item: _Script) -> Response:
        """Server-sent chunks the way OpenAI streams: a role chunk, content pieces, tool-call deltas, the finish
        reason, then (with ``stream_options.include_usage``) a usage chunk with no choices, then ``[DONE]``."""
        script = item if item.kind in ("text", "tool_calls", "stall") else _Script("default", None,
                                                                                   text=self.default_text)
        reply = self._completion(body, script)
        entry = self._record(request, model, body, f"stream:{item.kind}", 200, reply)
        entry.stream = True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        choice = reply["choices"][0]
        base = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
                "model": reply["model"], "system_fingerprint": "fp_fake"}

        def chunk(delta: JSON, finish: str | None = None) -> bytes:
            data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> Any:
            completed = False
            try:
                if item.kind == "hang":
                    await asyncio.sleep(item.seconds)  # no first token for this long
                yield chunk({"role": "assistant", "content": ""})
                for index, piece in enumerate(_pieces(choice["message"]["content"] or "")):
                    if item.kind == "stall" and index == item.stall_after:
                        await asyncio.sleep(item.seconds)
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    yield chunk({"content": piece})
                for position, call in enumerate(choice["message"].get("tool_calls") or []):
                    function = call["function"]
                    yield chunk({"tool_calls": [{"index": position, "id": call["id"], "type": "function",
                                                 "function": {"name": function["name"], "arguments": ""}}]})
                    arguments = function["arguments"]
                    for start in range(0, len(arguments), 16):
                        yield chunk({"tool_calls": [{"index": position,
                                                     "function": {"arguments": arguments[start:start + 16]}}]})
                yield chunk({}, choice["finish_reason"])
                if include_usage:
                    yield f"data: {json.dumps({**base, 'choices': [], 'usage': reply['usage']})}\n\n".encode()
                yield b"data: [DONE]\n\n"
                completed = True
            finally:
                entry.closed_early = not completed

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _transcriptions(self, request: HTTPRequest) -> Response:
        """multipart/form-data with ``file`` and ``model``, answered as ``response_format=json`` is."""
        denied = self._auth_error(request)
        raw = await request.body()
        try:
            fields, files, names = parse_multipart(raw, request.headers.get("content-type", ""))
        except ValueError:
            fields, files, names = {}, {}, {}
        body: JSON = {**fields, "file_name": names.get("file"), "file_bytes": len(files.get("file", b""))}
        model = fields.get("model")
        if denied is not None:
            self._record(request, model, body, "auth_failed", 401, None)
            return denied
        if not model or "file" not in files:
            self._record(request, model, body, "bad_request", 400, None)
            missing = "model" if not model else "file"
            return JSONResponse(error_body(400, f"Missing required parameter: '{missing}'.", param=missing),
                                status_code=400)
        with self._lock:
            item = self._transcripts.pop(0) if self._transcripts else _Script("transcript", None,
                                                                               text=self.default_transcript)
        if item.kind == "error":
            self._record(request, model, body, f"error:{item.status}", item.status, None)
            return Response(item.body or b"", status_code=item.status, headers={"content-type": "application/json"})
        reply: JSON = {"text": item.text or ""}
        if item.usage is not None:
            reply["usage"] = item.usage
        self._record(request, model, body, "transcript", 200, reply)
        return JSONResponse(reply)

    @staticmethod
    def _validate(body: JSON) -> tuple[str, str] | None:
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "you must provide a model parameter", "model"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "[] is too short - 'messages'", "messages"
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in (
                "system",
                "developer",
                "user",
                "assistant",
                "tool",
                "function",
            ):
                return f"Invalid value for 'messages[{index}].role'.", f"messages[{index}].role"
            if message.get("role") == "tool" and not message.get("tool_call_id"):
                return f"Missing required parameter: 'messages[{index}].tool_call_id'.", f"messages[{index}]"
        return None

    # -- response building --------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}{self._counter:024d}"

    def _completion(self, body: JSON, item: _Script) -> JSON:
        text = item.text
        finish_reason = item.finish_reason
        tool_calls: list[JSON] = []
        for spec in item.tool_calls:
            arguments = spec["arguments"]
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            tool_calls.append(
                {
                    "id": spec.get("id") or self._next_id("call_"),
                    "type": "function",
                    "function": {"name": spec["name"], "arguments": arguments},
                }
            )

        scripted = item.usage or {}
        prompt_tokens = int(scripted.get("prompt_tokens", estimate_prompt_tokens(body)))
        completion_tokens = int(scripted.get("completion_tokens", estimate_completion_tokens(text, tool_calls)))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and completion_tokens > limit:
            # A provider stops generating at the cap and bills exactly the cap.
            completion_tokens = limit
            finish_reason = "length"
            text, tool_calls = self._truncate(text, tool_calls, limit * 4)
        cached = min(int(scripted.get("cached_tokens", 0)), prompt_tokens)
        reasoning = min(int(scripted.get("reasoning_tokens", 0)), completion_tokens)

        message: JSON = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "id": self._next_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": reasoning,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    @staticmethod
    def _truncate(text: str | None, tool_calls: list[JSON], budget: int) -> tuple[str | None, list[JSON]]:
        """Cut output to ``budget`` bytes the way generation stops mid-stream.

        Text goes first, then tool calls in order; a call cut short keeps its
        partial (invalid) JSON arguments, later calls are never produced.
        """
        if text is not None:
            text = _truncate_utf8(text, budget)
            budget -= _utf8_len(text)
        kept: list[JSON] = []
        for call in tool_calls:
            name = call["function"]["name"]
            if budget <= _utf8_len(name):
                break
            budget -= _utf8_len(name)
            call = copy.deepcopy(call)
            arguments = _truncate_utf8(call["function"]["arguments"], budget)
            budget -= _utf8_len(arguments)
            call["function"]["arguments"] = arguments
            kept.append(call)
        return text, kept
