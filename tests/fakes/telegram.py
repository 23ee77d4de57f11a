"""FakeTelegram: a Bot API emulator served over real HTTP on 127.0.0.1.

Point python-telegram-bot at it with ``base_url=f"{fake.api_url}/bot"``.
It speaks the wire format PTB really uses (form-urlencoded with JSON-encoded
nested values, multipart for uploads) and reproduces the Bot API behaviours a
bot most often trips over: long-poll ``getUpdates`` with offset confirmation,
409 while a webhook is set or when a second poller appears, "message is not
modified", HTML entity parsing errors, the 4096-character limit, callback data
over 64 bytes, and edits dropping an inline keyboard that is not re-sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import ServedFake, ServerThread, parse_multipart, wait_until, wait_until_sync

__all__ = ["Call", "FakeTelegram", "TelegramAPIError", "make_update_json"]

JSON = dict[str, Any]

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile refuses larger files

_DEFAULT_DESCRIPTIONS: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)

_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

# Update types Telegram leaves out unless explicitly listed in allowed_updates.
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

# Parameters whose string value must never be decoded (free text, ids, URLs).
_TEXT_PARAMS = frozenset(
    {
        "text",
        "caption",
        "description",
        "short_description",
        "query",
        "data",
        "title",
        "secret_token",
        "url",
        "callback_query_id",
        "inline_message_id",
        "parse_mode",
        "action",
        "name",
        "language_code",
        "file_id",
        "photo",
        "document",
        "sticker",
        "video",
        "audio",
        "voice",
        "animation",
        "thumbnail",
        "emoji",
        "ip_address",
        "message_effect_id",
        "business_connection_id",
        "question",
        "explanation",
        "address",
    }
)
_INT_PARAMS = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "offset",
        "limit",
        "timeout",
        "user_id",
        "message_thread_id",
        "reply_to_message_id",
        "cache_time",
        "max_connections",
        "duration",
        "width",
        "height",
        "until_date",
    }
)
_INT_RE = re.compile(r"-?\d+")


class TelegramAPIError(Exception):
    """An error answered as a Bot API error body (``ok: false``)."""

    def __init__(self, status: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


class _ClientGone(Exception):
    """The HTTP client disconnected while its request was being held."""


def _bad_request(detail: str) -> TelegramAPIError:
    return TelegramAPIError(400, f"Bad Request: {detail}")


@dataclass
class Call:
    """One request received by the fake, in arrival order."""

    method: str
    params: JSON
    files: dict[str, bytes]
    at: float
    faulted: bool = False
    status: int = 0  # 0: no answer sent (still pending, or dropped by down()/disconnect)
    response: JSON | None = None
    filenames: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result(self) -> Any:
        """The ``result`` returned to the client (None for errors)."""
        return (self.response or {}).get("result")

    def __repr__(self) -> str:
        params = {k: (v if not isinstance(v, str) or len(v) < 80 else v[:77] + "...") for k, v in self.params.items()}
        flag = " faulted" if self.faulted else ""
        files = f" files={sorted(self.files)}" if self.files else ""
        return f"Call({self.method} {self.status}{flag} {params}{files})"


@dataclass
class _Fault:
    method: str  # canonical method name, or "*" for any
    status: int
    retry_after: int | None
    description: str | None
    times: int
    delay: float = 0.0


# ---------------------------------------------------------------------------
# wire-format parsing


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, bytes], dict[str, str]]:
    try:
        return parse_multipart(body, content_type)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None


def _decode_params(raw: dict[str, Any]) -> JSON:
    """Turn wire values back into Python values.

    PTB sends every non-string value JSON-encoded inside a form field
    (``chat_id=1001``, ``reply_markup={"inline_keyboard": ...}``,
    ``disable_notification=true``); free-text fields stay verbatim so a message
    text of ``"123"`` or ``"[x]"`` is not mangled.
    """
    params: JSON = {}
    for key, value in raw.items():
        if isinstance(value, str) and key not in _TEXT_PARAMS:
            stripped = value.strip()
            if key in _INT_PARAMS and _INT_RE.fullmatch(stripped):
                value = int(stripped)
            elif stripped in ("true", "false"):
                value = stripped == "true"
            elif stripped[:1] in ("{", "["):
                try:
                    value = json.loads(stripped)
                except ValueError as exc:
                    raise _bad_request(f"can't parse {key} JSON object") from exc
        params[key] = value
    return params


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _TelegramHTML(HTMLParser):
    """Parse Bot API HTML: whitelisted tags only, every tag closed."""

    _TYPES: ClassVar[dict[str, str]] = {
        "b": "bold",
        "strong": "bold",
        "i": "italic",
        "em": "italic",
        "u": "underline",
        "ins": "underline",
        "s": "strikethrough",
        "strike": "strikethrough",
        "del": "strikethrough",
        "tg-spoiler": "spoiler",
        "span": "spoiler",
        "a": "text_link",
        "code": "code",
        "pre": "pre",
        "blockquote": "blockquote",
        "tg-emoji": "custom_emoji",
    }

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.source = source
        self.parts: list[str] = []
        self._utf16_pos = 0
        self.stack: list[tuple[str, int, JSON]] = []
        self.entities: list[JSON] = []

    def _byte_offset(self) -> int:
        line, col = self.getpos()
        lines = self.source.split("\n")
        char_offset = sum(len(x) + 1 for x in lines[: line - 1]) + col
        return len(self.source[:char_offset].encode("utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self._TYPES or (tag == "span" and dict(attrs).get("class") != "tg-spoiler"):
            raise _bad_request(
                f'can\'t parse entities: Unsupported start tag "{tag}" at byte offset {self._byte_offset()}'
            )
        extra: JSON = {}
        attributes = dict(attrs)
        if tag == "a":
            href = attributes.get("href") or ""
            if not href:
                raise _bad_request(f"can't parse entities: Can't find end of URL at byte offset {self._byte_offset()}")
            extra["url"] = href
        if tag == "code" and self.stack and self.stack[-1][0] == "pre":
            language = (attributes.get("class") or "").removeprefix("language-")
            if language:
                self.stack[-1][2]["language"] = language
        self.stack.append((tag, self._utf16_pos, extra))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise _bad_request(f'can\'t parse entities: Unsupported start tag "{tag}" at byte offset {self._byte_offset()}')

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1][0] != tag:
            expected = f', expected "</{self.stack[-1][0]}>"' if self.stack else ""
            raise _bad_request(
                f"can't parse entities: Unmatched end tag at byte offset {self._byte_offset()}"
                f'{expected}, found "</{tag}>"'
            )
        name, start, extra = self.stack.pop()
        length = self._utf16_pos - start
        if length > 0:
            entity: JSON = {"type": self._TYPES[name], "offset": start, "length": length, **extra}
            if entity["type"] == "code" and self.stack and self.stack[-1][0] == "pre":
                return  # <pre><code class=...> is a single pre entity
            self.entities.append(entity)

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        self._utf16_pos += _utf16_len(data)

    def result(self) -> tuple[str, list[JSON]]:
        self.feed(self.source)
        self.close()
        if self.stack:
            raise _bad_request(
                f"can't parse entities: Can't find end tag corresponding to start tag \"{self.stack[-1][0]}\""
            )
        self.entities.sort(key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.parts), self.entities


def _render(text: str, parse_mode: str | None, entities: Any) -> tuple[str, list[JSON] | None]:
    """Return (visible text, entities) the way the Bot API stores a message."""
    if (parse_mode or "").upper() == "HTML":
        plain, parsed = _TelegramHTML(text).result() if "<" in text or "&" in text else (text, [])
        return plain, parsed or None
    # MarkdownV2/Markdown are passed through unvalidated: their escaping rules
    # are too intricate to emulate faithfully, and a half-right validator would
    # produce errors the real API does not.
    if isinstance(entities, list) and entities:
        return text, entities
    return text, None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _validate_inline_keyboard(markup: Any) -> None:
    if not isinstance(markup, dict) or "inline_keyboard" not in markup:
        return
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad_request('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not button.get("text"):
                raise _bad_request("can't parse inline keyboard button: Text must be non-empty")
            kinds = set(button) - {"text"}
            if not kinds:
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            if "callback_data" in button:
                data = str(button["callback_data"]).encode("utf-8")
                if not data or len(data) > MAX_CALLBACK_DATA_BYTES:
                    raise _bad_request("BUTTON_DATA_INVALID")


def _inline_markup(markup: Any) -> JSON | None:
    """Only inline keyboards are echoed back in the Message object."""
    if isinstance(markup, dict) and "inline_keyboard" in markup:
        return markup
    return None


def _update_type(update: JSON) -> str:
    return next((key for key in update if key != "update_id"), "")


# ---------------------------------------------------------------------------


class FakeTelegram(ServedFake):
    """Bot API emulator. Thread-safe: the test thread injects, the server thread serves."""

    def __init__(self, token: str = "123456:TEST-TOKEN") -> None:
        self.token = token
        prefix = token.split(":", 1)[0]
        self.bot_id = int(prefix) if prefix.isdigit() else 123456
        self.bot_first_name = "Aria"
        self.bot_username = "aria_test_bot"
        self.calls: list[Call] = []
        self.webhook: JSON | None = None
        self.allowed_updates: list[str] = []
        self._lock = threading.RLock()
        self._updates: list[JSON] = []
        self._last_update_id = 0
        self._poll_generation = 0
        self._chats: dict[int | str, JSON] = {}
        self._next_message_id: dict[int | str, int] = {}
        self._messages: dict[tuple[int | str, int], JSON] = {}
        self._open_callbacks: set[str] = set()
        self._callback_counter = 0
        self._files: dict[str, tuple[bytes, str]] = {}
        self._file_counter = 0
        self._faults: list[_Fault] = []
        self._blocked: set[int | str] = set()
        self._commands: dict[tuple[str, str], list[JSON]] = {}
        # sendMessageDraft (Bot API 9.5): each draft shown, in order; False makes the method unknown, as on an
        # older Bot API server or an emulator without it.
        self.drafts: list[tuple[int | str, int, str]] = []
        self.drafts_supported = True
        self._methods: dict[str, tuple[str, Callable[..., Any]]] = {}
        for name, handler in self._handlers().items():
            self._methods[name.lower()] = (name, handler)
        app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._endpoint, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._file_endpoint, methods=["GET"]),
            ]
        )
        app.add_exception_handler(404, self._not_found)
        app.add_exception_handler(405, self._not_found)
        self.server = ServerThread(app, name="fake-telegram")


    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT``; PTB wants ``base_url=f"{api_url}/bot"``."""
        return self.server.url

    @property
    def base_url(self) -> str:
        """The value to pass as PTB's ``base_url``."""
        return f"{self.server.url}/bot"

    @property
    def base_file_url(self) -> str:
        """The value to pass as PTB's ``base_file_url``."""
        return f"{self.server.url}/file/bot"

    # -- injecting updates --------------------------------------------------

    def make_message_update(
        self,
        text: str,
        user_id: int = 1001,
        chat_id: int | None = None,
        first_name: str = "Owner",
        username: str | None = None,
        *,
        reply_to_message_id: int | None = None,
        extra: JSON | None = None,
    ) -> JSON:
        """Build (without queueing) a ``message`` update; update_id is allocated.

        Useful for webhook tests that POST the JSON to the app themselves.
        """
        with self._lock:
            chat = chat_id if chat_id is not None else user_id
            user = self._user(user_id, first_name, username)
            self._remember_chat(chat, user)
            message: JSON = {
                "message_id": self._alloc_message_id(chat),
                "from": user,
                "chat": self._chat(chat),
                "date": int(time.time()),
                "text": text,
            }
            if text.startswith("/"):
                command = text.split(maxsplit=1)[0] if text.strip() else text
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]
            if reply_to_message_id is not None:
                replied = self._messages.get((chat, reply_to_message_id))
                if replied is not None:
                    message["reply_to_message"] = self._shallow(replied)
            if extra:
                message.update(extra)
            self._messages[(chat, message["message_id"])] = message
            return {"update_id": self._alloc_update_id(), "message": copy.deepcopy(message)}

    def make_attachment_update(
        self,
        kind: str,
        data: bytes = b"",
        file_name: str | None = None,
        *,
        caption: str | None = None,
        user_id: int = 1001,
        chat_id: int | None = None,
        duration: int = 1,
        file_size: int | None = None,
        extra: JSON | None = None,
    ) -> JSON:
        """Build (without queueing) a message carrying a ``document``, ``voice`` or ``photo`` and no text; its bytes
        are served by getFile and the file download. ``file_size`` overrides the size Telegram reports."""
        with self._lock:
            chat = chat_id if chat_id is not None else user_id
            user = self._user(user_id, "Owner", None)
            self._remember_chat(chat, user)
            file_id = self._store_file(data, file_name or ("voice.oga" if kind == "voice" else "photo.jpg"))
            size = len(data) if file_size is None else file_size
            common: JSON = {"file_id": file_id, "file_unique_id": f"AgAD{file_id[-6:]}", "file_size": size}
            attached: JSON
            if kind == "document":
                attached = {**common, "mime_type": "application/octet-stream"}
                if file_name is not None:
                    attached["file_name"] = file_name
            elif kind == "voice":
                attached = {**common, "duration": duration, "mime_type": "audio/ogg"}
            elif kind == "photo":
                attached = [{**common, "width": 90, "height": 60}]
            else:
                raise ValueError(f"unknown attachment kind {kind!r}")
            message: JSON = {
                "message_id": self._alloc_message_id(chat),
                "from": user,
                "chat": self._chat(chat),
                "date": int(time.time()),
                kind: attached,
            }
            if caption is not None:
                message["caption"] = caption
            if extra:
                message.update(extra)
            self._messages[(chat, message["message_id"])] = message
            return {"update_id": self._alloc_update_id(), "message": copy.deepcopy(message)}

    def make_callback_update(
        self,
        data: str,
        user_id: int = 1001,
        chat_id: int | None = None,
        message_id: int | None = None,
        first_name: str = "Owner",
        username: str | None = None,
    ) -> JSON:
        """Build (without queueing) a ``callback_query`` update for a button press.

        The message is the bot message ``message_id``; without one, the newest
        bot message in the chat whose keyboard carries ``data`` (else the newest
        bot message, else a stub bot message that then exists for edits).
        """
        with self._lock:
            chat = chat_id if chat_id is not None else user_id
            user = self._user(user_id, first_name, username)
            self._remember_chat(chat, user)
            message = self._find_button_message(chat, data, message_id)
            self._callback_counter += 1
            query_id = str(4_000_000_000_000_000_000 + self._callback_counter)
            self._open_callbacks.add(query_id)
            query: JSON = {
                "id": query_id,
                "from": user,
                "message": copy.deepcopy(message),
                "chat_instance": str(zlib.crc32(str(chat).encode()) * 7919),
                "data": data,
            }
            return {"update_id": self._alloc_update_id(), "callback_query": query}

    def add_message(
        self,
        text: str,
        user_id: int = 1001,
        chat_id: int | None = None,
        first_name: str = "Owner",
        username: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Queue a user message (``/cmd`` gets a bot_command entity); returns update_id."""
        update = self.make_message_update(text, user_id, chat_id, first_name, username, **kwargs)
        return self._enqueue(update)

    def press_button(
        self,
        data: str,
        user_id: int = 1001,
        chat_id: int | None = None,
        message_id: int | None = None,
        **kwargs: Any,
    ) -> int:
        """Queue an inline-button press (callback_query); returns update_id."""
        update = self.make_callback_update(data, user_id, chat_id, message_id, **kwargs)
        return self._enqueue(update)

    def add_raw_update(self, update: JSON) -> int:
        """Queue any dict as an update (malformed ones included); returns update_id."""
        update = dict(update)
        with self._lock:
            if "update_id" not in update:
                update["update_id"] = self._alloc_update_id()
            elif isinstance(update["update_id"], int):
                self._last_update_id = max(self._last_update_id, update["update_id"])
        return self._enqueue(update)

    def add_file(self, data: bytes, file_name: str = "file.bin") -> str:
        """Register file content downloadable via getFile; returns its file_id."""
        with self._lock:
            return self._store_file(data, file_name)

    @property
    def pending_updates(self) -> list[JSON]:
        """Updates not yet confirmed by an offset."""
        with self._lock:
            return copy.deepcopy(self._updates)

    # -- faults and chat state ---------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int | None = None,
        times: int = 1,
        description: str | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` ("*" = any) with an error.

        429 without ``retry_after`` uses 1 s (PTB only raises RetryAfter when
        the value is non-zero).
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(_Fault(self._canonical(method), status, retry_after, description, times))

    def delay_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` calls of ``method`` for ``seconds`` (client timeouts)."""
        with self._lock:
            self._faults.append(_Fault(self._canonical(method), 200, None, None, times, delay=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def block_user(self, chat_id: int) -> None:
        """Sends to ``chat_id`` fail with 403 "bot was blocked by the user"."""
        with self._lock:
            self._blocked.add(chat_id)

    def unblock_user(self, chat_id: int) -> None:
        with self._lock:
            self._blocked.discard(chat_id)

    def commands_for(self, scope_type: str = "default", language_code: str = "") -> list[JSON]:
        """Commands set by setMyCommands for a scope type (no chat-specific scopes)."""
        with self._lock:
            return copy.deepcopy(self._commands.get((json.dumps({"type": scope_type}), language_code), []))

    def message(self, chat_id: int | str, message_id: int) -> JSON | None:
        """Current state of a stored message (after edits), or None if deleted/unknown."""
        with self._lock:
            found = self._messages.get((chat_id, message_id))
            return copy.deepcopy(found) if found is not None else None

    # -- recording helpers --------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        name = self._canonical(method)
        with self._lock:
            return [call for call in self.calls if call.method == name]

    @property
    def last_call(self) -> Call | None:
        with self._lock:
            return self.calls[-1] if self.calls else None

    def clear_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def sent_texts(self, chat_id: int | str | None = None) -> list[str]:
        """``text`` of successful sendMessage and editMessageText calls, in order.

        Raw as sent (HTML tags included); an edit contributes the message's new text.
        """
        texts: list[str] = []
        with self._lock:
            for call in self.calls:
                if not call.ok or call.method not in ("sendMessage", "editMessageText"):
                    continue
                if chat_id is not None and str(call.params.get("chat_id")) != str(chat_id):
                    continue
                texts.append(str(call.params.get("text", "")))
        return texts

    def message_texts(self, chat_id: int | str) -> list[str]:
        """What the user sees now: visible text of the bot's live text messages."""
        with self._lock:
            found = [
                (mid, msg.get("text", ""))
                for (chat, mid), msg in self._messages.items()
                if str(chat) == str(chat_id) and msg["from"]["id"] == self.bot_id and "text" in msg
            ]
        return [text for _, text in sorted(found)]

    @property
    def photos(self) -> list[tuple[int | str, bytes, str | None]]:
        """(chat_id, bytes, caption) for each successful sendPhoto."""
        result: list[tuple[int | str, bytes, str | None]] = []
        with self._lock:
            for call in self.calls:
                if call.ok and call.method == "sendPhoto":
                    data = call.files.get("photo")
                    if data is None:
                        ref = str(call.params.get("photo", ""))
                        if ref.startswith("attach://"):
                            data = call.files.get(ref.removeprefix("attach://"))
                        else:
                            data = self._files.get(ref, (b"", ""))[0]
                    result.append((call.params.get("chat_id", ""), data or b"", call.params.get("caption")))
        return result

    @property
    def documents(self) -> list[tuple[int | str, str, bytes, str | None]]:
        """(chat_id, file name, bytes, caption) for each successful sendDocument."""
        result: list[tuple[int | str, str, bytes, str | None]] = []
        with self._lock:
            for call in self.calls:
                if call.ok and call.method == "sendDocument":
                    ref = str(call.params.get("document", ""))
                    field_name = ref.removeprefix("attach://") if ref.startswith("attach://") else "document"
                    data = call.files.get(field_name, b"")
                    name = call.filenames.get(field_name, field_name)
                    result.append((call.params.get("chat_id", ""), name, data, call.params.get("caption")))
        return result

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - a plain deadline, not a cancel scope
        predicate: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        """Wait until ``count`` calls of ``method`` (faulted ones included) match."""
        return await wait_until(
            self._matcher(method, predicate),
            count=count,
            timeout=timeout,
            what=method,
            recent=self._recent,
        )

    def wait_for_sync(
        self,
        method: str,
        count: int = 1,
        timeout: float = 5.0,
        predicate: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        return wait_until_sync(
            self._matcher(method, predicate),
            count=count,
            timeout=timeout,
            what=method,
            recent=self._recent,
        )

    def _matcher(self, method: str, predicate: Callable[[Call], bool] | None) -> Callable[[], list[Call]]:
        def matches() -> list[Call]:
            return [call for call in self.calls_to(method) if predicate is None or predicate(call)]

        return matches

    def _recent(self) -> Sequence[Call]:
        with self._lock:
            return list(self.calls[-20:])

    # -- state helpers (call with the lock held) ----------------------------

    def _canonical(self, method: str) -> str:
        if method == "*":
            return method
        entry = self._methods.get(method.lower())
        return entry[0] if entry else method

    def _alloc_update_id(self) -> int:
        self._last_update_id += 1
        return self._last_update_id

    def _alloc_message_id(self, chat: int | str) -> int:
        next_id = self._next_message_id.get(chat, 1)
        self._next_message_id[chat] = next_id + 1
        return next_id

    def _enqueue(self, update: JSON) -> int:
        with self._lock:
            self._updates.append(update)
            return int(update.get("update_id", 0))

    def _bot_user(self) -> JSON:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    @staticmethod
    def _user(user_id: int, first_name: str, username: str | None) -> JSON:
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
        if username:
            user["username"] = username
        return user

    def _remember_chat(self, chat: int | str, user: JSON) -> None:
        if isinstance(chat, int) and chat > 0 and chat not in self._chats:
            private: JSON = {"id": chat, "type": "private", "first_name": user["first_name"]}
            if "username" in user:
                private["username"] = user["username"]
            self._chats[chat] = private

    def _chat(self, chat: int | str) -> JSON:
        known = self._chats.get(chat)
        if known is not None:
            return dict(known)
        if isinstance(chat, str):
            name = chat.removeprefix("@")
            channel_id = -1_000_000_000_000 - zlib.crc32(name.encode())
            return {"id": channel_id, "type": "channel", "title": name, "username": name}
        if chat > 0:
            return {"id": chat, "type": "private", "first_name": f"User{chat}"}
        kind = "supergroup" if str(chat).startswith("-100") else "group"
        return {"id": chat, "type": kind, "title": "Test Group"}

    @staticmethod
    def _shallow(message: JSON) -> JSON:
        return {k: copy.deepcopy(v) for k, v in message.items() if k != "reply_to_message"}

    def _find_button_message(self, chat: int | str, data: str, message_id: int | None) -> JSON:
        if message_id is not None:
            found = self._messages.get((chat, message_id))
            if found is not None:
                return found
        else:
            bot_messages = [
                msg
                for (c, _), msg in sorted(self._messages.items(), key=lambda item: item[0][1])
                if c == chat and msg["from"]["id"] == self.bot_id
            ]
            for msg in reversed(bot_messages):
                rows = (msg.get("reply_markup") or {}).get("inline_keyboard", [])
                if any(btn.get("callback_data") == data for row in rows for btn in row):
                    return msg
            if bot_messages:
                return bot_messages[-1]
        # Unknown message: create a stub bot message so later edits succeed.
        mid = message_id if message_id is not None else self._alloc_message_id(chat)
        if message_id is not None:
            self._next_message_id[chat] = max(self._next_message_id.get(chat, 1), message_id + 1)
        stub: JSON = {
            "message_id": mid,
            "from": self._bot_user(),
            "chat": self._chat(chat),
            "date": int(time.time()),
            "text": "(message)",
        }
        self._messages[(chat, mid)] = stub
        return stub

    def _store_file(self, data: bytes, file_name: str) -> str:
        self._file_counter += 1
        file_id = f"BQACAgFake{self._file_counter:06d}"
        self._files[file_id] = (data, file_name)
        return file_id

    # -- HTTP layer ---------------------------------------------------------

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"ok": False, "error_code": 404, "description": "Not Found"}, status_code=404)

    async def _read_params(self, request: Request) -> tuple[JSON, dict[str, bytes], dict[str, str]]:
        raw: dict[str, Any] = dict(request.query_params)
        files: dict[str, bytes] = {}
        filenames: dict[str, str] = {}
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        if body:
            if content_type.startswith("application/json"):
                try:
                    decoded = json.loads(body)
                except ValueError as exc:
                    raise _bad_request("can't parse JSON object") from exc
                if not isinstance(decoded, dict):
                    raise _bad_request("JSON object expected")
                raw.update(decoded)
            elif content_type.startswith("multipart/form-data"):
                fields, files, filenames = _parse_multipart(body, content_type)
                raw.update(fields)
            else:
                raw.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return _decode_params(raw), files, filenames

    async def _endpoint(self, request: Request) -> Response:
        token = request.path_params["token"]
        method_in = request.path_params["method"]
        entry = self._methods.get(method_in.lower())
        method = entry[0] if entry else method_in
        call = Call(method=method, params={}, files={}, at=time.time())
        try:
            try:
                call.params, call.files, call.filenames = await self._read_params(request)
            finally:
                with self._lock:
                    self.calls.append(call)
            if token != self.token:
                raise TelegramAPIError(401, "Unauthorized")
            if entry is None or (entry[0] == "sendMessageDraft" and not self.drafts_supported):
                raise TelegramAPIError(404, "Not Found")
            fault = self._take_fault(method)
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                else:
                    call.faulted = True
                    raise self._fault_error(fault)
            handler = entry[1]
            if asyncio.iscoroutinefunction(handler):
                result = await handler(call.params, call.files, call.filenames, request=request)
            else:
                with self._lock:
                    result = handler(call.params, call.files, call.filenames)
            body: JSON = {"ok": True, "result": result}
            call.status, call.response = 200, body
            return JSONResponse(body)
        except TelegramAPIError as err:
            call.status, call.response = err.status, err.body()
            return JSONResponse(err.body(), status_code=err.status)
        except _ClientGone:
            return Response(status_code=499)  # never read: the client is gone

    async def _file_endpoint(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return JSONResponse({"ok": False, "error_code": 401, "description": "Unauthorized"}, status_code=401)
        path = request.path_params["path"]
        with self._lock:
            for file_id, (data, _) in self._files.items():
                if file_id in path:
                    return Response(data, media_type="application/octet-stream")
        return JSONResponse({"ok": False, "error_code": 404, "description": "Not Found"}, status_code=404)

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in (method, "*"):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    @staticmethod
    def _fault_error(fault: _Fault) -> TelegramAPIError:
        parameters: JSON | None = None
        if fault.retry_after is not None:
            parameters = {"retry_after": fault.retry_after}
        if fault.description is not None:
            description = fault.description
        elif fault.status == 429:
            description = f"Too Many Requests: retry after {fault.retry_after}"
        else:
            description = _DEFAULT_DESCRIPTIONS.get(fault.status, "Error")
        return TelegramAPIError(fault.status, description, parameters)

    # -- Bot API methods ----------------------------------------------------

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendChatAction": self._send_chat_action,
            "sendMessageDraft": self._send_message_draft,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageCaption": self._edit_message_caption,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_callback_query,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getFile": self._get_file,
            "close": self._true,
            "logOut": self._true,
        }

    @staticmethod
    def _true(params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        return True

    def _get_me(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(
        self, params: JSON, files: dict[str, bytes], filenames: dict[str, str], request: Request
    ) -> list[JSON]:
        offset = params.get("offset")
        limit = params.get("limit", 100)
        timeout = params.get("timeout", 0)
        if not all(isinstance(value, int) for value in (limit, timeout, offset if offset is not None else 0)):
            raise _bad_request("wrong parameter type in request")
        limit = min(max(limit, 1), 100)
        with self._lock:
            if self.webhook is not None:
                raise TelegramAPIError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            # A newer poll supersedes this one, exactly like two bot instances.
            self._poll_generation += 1
            generation = self._poll_generation
            if isinstance(params.get("allowed_updates"), list):
                self.allowed_updates = list(params["allowed_updates"])
            if offset is not None and offset < 0:
                self._updates = self._updates[offset:]
            elif offset:
                self._updates = [u for u in self._updates if int(u.get("update_id", 0)) >= offset]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0)
        while True:
            with self._lock:
                if generation != self._poll_generation:
                    raise TelegramAPIError(409, _DEFAULT_DESCRIPTIONS[409])
                ready = self._deliverable(limit)
            if ready or loop.time() >= deadline:
                return ready
            if await request.is_disconnected():
                # The client gave up (e.g. PTB cancelling its poll on shutdown);
                # stop holding the poll so it cannot clash with the next one.
                raise _ClientGone
            await asyncio.sleep(0.01)

    def _deliverable(self, limit: int) -> list[JSON]:
        allowed = set(self.allowed_updates)
        kept: list[JSON] = []
        for update in self._updates:
            kind = _update_type(update)
            if (allowed and kind not in allowed) or (not allowed and kind in _OPT_IN_UPDATES):
                continue  # Telegram would not have stored it for this bot
            kept.append(update)
        self._updates = kept
        return copy.deepcopy(kept[:limit])

    def _target_chat(self, params: JSON) -> int | str:
        chat = params.get("chat_id")
        if chat is None or chat == "":
            raise _bad_request("chat_id is empty")
        if chat in self._blocked:
            raise TelegramAPIError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _new_bot_message(self, params: JSON, chat: int | str, content: JSON) -> JSON:
        message: JSON = {
            "message_id": self._alloc_message_id(chat),
            "from": self._bot_user(),
            "chat": self._chat(chat),
            "date": int(time.time()),
        }
        if params.get("message_thread_id") is not None:
            message["message_thread_id"] = params["message_thread_id"]
        reply_to = params.get("reply_to_message_id")
        reply_parameters = params.get("reply_parameters")
        allow_missing = bool(params.get("allow_sending_without_reply"))
        if isinstance(reply_parameters, dict):
            reply_to = reply_parameters.get("message_id")
            allow_missing = bool(reply_parameters.get("allow_sending_without_reply", allow_missing))
        if reply_to is not None:
            replied = self._messages.get((chat, reply_to))
            if replied is not None:
                message["reply_to_message"] = self._shallow(replied)
            elif not allow_missing:
                raise _bad_request("message to be replied not found")
        message.update({k: v for k, v in content.items() if v is not None})
        markup = params.get("reply_markup")
        _validate_inline_keyboard(markup)
        if _inline_markup(markup) is not None:
            message["reply_markup"] = markup
        self._messages[(chat, message["message_id"])] = message
        return copy.deepcopy(message)

    def _caption_content(self, params: JSON) -> JSON:
        caption = params.get("caption")
        if caption is None or caption == "":
            return {}
        plain, entities = _render(str(caption), params.get("parse_mode"), params.get("caption_entities"))
        if len(plain) > MAX_CAPTION_LENGTH:
            raise _bad_request("message caption is too long")
        return {"caption": plain, "caption_entities": entities}

    def _send_message(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON:
        chat = self._target_chat(params)
        text = params.get("text")
        if text is None:
            raise _bad_request("message text is empty")
        plain, entities = _render(str(text), params.get("parse_mode"), params.get("entities"))
        if not plain.strip():
            raise _bad_request("message text is empty")
        if len(plain) > MAX_TEXT_LENGTH:
            raise _bad_request("message is too long")
        return self._new_bot_message(params, chat, {"text": plain, "entities": entities})

    def _send_message_draft(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        chat = self._target_chat(params)
        if not str(chat).isdigit():
            raise _bad_request("draft can be sent only to private chats")
        raw_id = str(params.get("draft_id", ""))
        draft_id = int(raw_id) if raw_id.lstrip("-").isdigit() else 0
        if draft_id == 0:
            raise _bad_request("draft_id must be non-zero")
        plain, _ = _render(str(params.get("text") or ""), params.get("parse_mode"), params.get("entities"))
        if len(plain) > MAX_TEXT_LENGTH:
            raise _bad_request("message is too long")
        self.drafts.append((chat, draft_id, plain))
        return True

    def _upload(
        self, field_name: str, params: JSON, files: dict[str, bytes], filenames: dict[str, str]
    ) -> tuple[bytes, str, str]:
        """Return (bytes, file_name, file_id) for an uploaded or referenced file."""
        ref = params.get(field_name)
        name = field_name
        if field_name in files:
            data, file_name = files[field_name], filenames.get(field_name, field_name)
        elif isinstance(ref, str) and ref.startswith("attach://"):
            name = ref.removeprefix("attach://")
            if name not in files:
                raise _bad_request(f"{field_name} not found in the request")
            data, file_name = files[name], filenames.get(name, name)
        elif isinstance(ref, str) and ref:
            if ref in self._files:
                data, file_name = self._files[ref]
                return data, file_name, ref
            if urlsplit(ref).scheme in ("http", "https"):
                data, file_name = b"", ref.rsplit("/", 1)[-1]
            else:
                raise _bad_request("wrong file identifier/HTTP URL specified")
        else:
            raise _bad_request(f"there is no {field_name} in the request")
        if not data:
            raise _bad_request("file must be non-empty")
        return data, file_name, self._store_file(data, file_name)

    def _send_photo(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON:
        chat = self._target_chat(params)
        data, _, file_id = self._upload("photo", params, files, filenames)
        width, height = _png_size(data) or (320, 240)
        photo = [
            {
                "file_id": file_id,
                "file_unique_id": f"AQAD{file_id[-6:]}",
                "width": width,
                "height": height,
                "file_size": len(data),
            }
        ]
        return self._new_bot_message(params, chat, {"photo": photo, **self._caption_content(params)})

    def _send_document(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON:
        chat = self._target_chat(params)
        data, file_name, file_id = self._upload("document", params, files, filenames)
        document = {
            "file_id": file_id,
            "file_unique_id": f"AgAD{file_id[-6:]}",
            "file_name": file_name,
            "mime_type": "application/octet-stream",
            "file_size": len(data),
        }
        return self._new_bot_message(params, chat, {"document": document, **self._caption_content(params)})

    def _send_chat_action(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        self._target_chat(params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    def _editable(self, params: JSON) -> JSON | None:
        """The stored bot message an edit targets; None for inline messages."""
        if params.get("inline_message_id"):
            return None
        chat, message_id = params.get("chat_id"), params.get("message_id")
        if chat is None or message_id is None:
            raise _bad_request("message identifier is not specified")
        message = self._messages.get((chat, message_id))
        if message is None:
            raise _bad_request("message to edit not found")
        if message["from"]["id"] != self.bot_id:
            raise _bad_request("message can't be edited")
        return message

    def _apply_edit(self, message: JSON, changes: JSON, markup: Any) -> JSON:
        _validate_inline_keyboard(markup)
        new_markup = _inline_markup(markup)
        current = {key: message.get(key) for key in changes}
        if current == changes and message.get("reply_markup") == new_markup:
            raise _bad_request(_NOT_MODIFIED.removeprefix("Bad Request: "))
        for key, value in changes.items():
            if value is None:
                message.pop(key, None)
            else:
                message[key] = value
        # Like the real API: an edit without reply_markup removes the keyboard.
        if new_markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = new_markup
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _edit_message_text(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON | bool:
        text = params.get("text")
        if text is None or text == "":
            raise _bad_request("text must be non-empty")
        plain, entities = _render(str(text), params.get("parse_mode"), params.get("entities"))
        if not plain.strip():
            raise _bad_request("text must be non-empty")
        if len(plain) > MAX_TEXT_LENGTH:
            raise _bad_request("MESSAGE_TOO_LONG")
        message = self._editable(params)
        if message is None:
            return True
        if "text" not in message:
            raise _bad_request("there is no text in the message to edit")
        return self._apply_edit(message, {"text": plain, "entities": entities}, params.get("reply_markup"))

    def _edit_message_caption(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON | bool:
        message = self._editable(params)
        if message is None:
            return True
        if "text" in message:
            raise _bad_request("there is no caption in the message to edit")
        content = self._caption_content(params) or {"caption": None, "caption_entities": None}
        return self._apply_edit(message, content, params.get("reply_markup"))

    def _edit_message_reply_markup(
        self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]
    ) -> JSON | bool:
        message = self._editable(params)
        if message is None:
            return True
        return self._apply_edit(message, {}, params.get("reply_markup"))

    def _delete_message(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        key = (params.get("chat_id"), params.get("message_id"))
        if self._messages.pop(key, None) is None:  # type: ignore[arg-type]
            raise _bad_request("message to delete not found")
        return True

    def _answer_callback_query(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        query_id = str(params.get("callback_query_id", ""))
        if query_id not in self._open_callbacks:
            raise _bad_request("query is too old and response timeout expired or query ID is invalid")
        self._open_callbacks.discard(query_id)
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise _bad_request("MESSAGE_TOO_LONG")
        return True

    @staticmethod
    def _commands_key(params: JSON) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(params.get("language_code") or "")

    def _set_my_commands(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad_request('parameter "commands" is required')
        if len(commands) > 100:
            raise _bad_request("too many commands specified")
        for command in commands:
            if not isinstance(command, dict) or not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise _bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self._commands[self._commands_key(params)] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    def _get_my_commands(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> list[JSON]:
        return copy.deepcopy(self._commands.get(self._commands_key(params), []))

    def _delete_my_commands(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        self._commands.pop(self._commands_key(params), None)
        return True

    def _set_webhook(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        url = str(params.get("url") or "")
        if not url:
            self.webhook = None
            return True
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        if parts.port not in (None, 80, 88, 443, 8443):
            raise _bad_request("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        if isinstance(params.get("allowed_updates"), list):
            self.allowed_updates = list(params["allowed_updates"])
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "max_connections": params.get("max_connections", 40),
            "ip_address": params.get("ip_address"),
            "allowed_updates": params.get("allowed_updates"),
        }
        return True

    def _delete_webhook(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _get_webhook_info(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON:
        info: JSON = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook:
            info["max_connections"] = self.webhook["max_connections"]
            info["ip_address"] = "127.0.0.1"
            if self.allowed_updates:
                info["allowed_updates"] = list(self.allowed_updates)
        return info

    def _get_file(self, params: JSON, files: dict[str, bytes], filenames: dict[str, str]) -> JSON:
        file_id = str(params.get("file_id", ""))
        if file_id not in self._files:
            raise _bad_request("invalid file_id")
        data, file_name = self._files[file_id]
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise _bad_request("file is too big")
        extension = file_name.rsplit(".", 1)[-1] if "." in file_name else "bin"
        return {
            "file_id": file_id,
            "file_unique_id": f"AgAD{file_id[-6:]}",
            "file_size": len(data),
            "file_path": f"documents/{file_id}.{extension}",
        }


def make_update_json(update: JSON) -> bytes:
    """Serialize an update exactly as Telegram POSTs it to a webhook."""
    return json.dumps(update, ensure_ascii=False).encode("utf-8")
