"""The fakes, exercised through the real client libraries the app uses."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import json
import socket
import time

import httpx
import openai
import pytest
import telegram
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup

from tests.conftest_fakes import tripwire_guard
from tests.fakes import FakeOpenAI, FakeTelegram, NetworkTripwire, TripwireViolation
from tests.fakes.openai import estimate_completion_tokens, estimate_prompt_tokens

USER = [{"role": "user", "content": "How is the disk on web-1?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_shell",
            "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
    }
]


def _seconds(value: int | float | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def _bot(fake: FakeTelegram) -> Bot:
    return Bot(fake.token, base_url=f"{fake.api_url}/bot")


def _client(fake: FakeOpenAI, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, **kwargs)  # type: ignore[arg-type]


# -- FakeTelegram -------------------------------------------------------------


async def test_get_me_and_send_message(fake_telegram: FakeTelegram) -> None:
    async with _bot(fake_telegram) as bot:
        me = await bot.get_me()
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Approve", callback_data="approve:1")]])
        first = await bot.send_message(1001, "Disk at <b>91%</b>", parse_mode="HTML", reply_markup=keyboard)
        second = await bot.send_message(1001, "second")

    assert (me.id, me.username, me.is_bot) == (123456, "aria_test_bot", True)
    assert first.text == "Disk at 91%"  # what the user sees: tags become entities
    assert first.entities[0].type == "bold"
    assert first.reply_markup == keyboard
    assert first.from_user is not None and first.from_user.id == me.id
    assert second.message_id == first.message_id + 1
    call = fake_telegram.calls_to("sendMessage")[0]
    # Form fields arrive as strings; the fake decodes them back.
    assert call.params["chat_id"] == 1001
    assert call.params["reply_markup"] == {"inline_keyboard": [[{"text": "Approve", "callback_data": "approve:1"}]]}
    assert fake_telegram.sent_texts(1001) == ["Disk at <b>91%</b>", "second"]


async def test_send_photo_records_exact_bytes(fake_telegram: FakeTelegram) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR\x00\x00\x02\x80\x00\x00\x01\xe0" + bytes(range(256)) * 4
    async with _bot(fake_telegram) as bot:
        sent = await bot.send_photo(1001, png, caption="CPU, last 24h")

    assert fake_telegram.photos == [(1001, png, "CPU, last 24h")]
    assert (sent.photo[-1].width, sent.photo[-1].height) == (640, 480)
    assert sent.caption == "CPU, last 24h"


async def test_get_updates_long_poll_and_offset(fake_telegram: FakeTelegram) -> None:
    async with _bot(fake_telegram) as bot:
        poll = asyncio.create_task(bot.get_updates(timeout=5))
        await asyncio.sleep(0.1)
        assert not poll.done()  # held open while nothing is queued
        started = time.monotonic()
        update_id = fake_telegram.add_message("/status web-1")
        updates = await poll
        assert time.monotonic() - started < 1.0  # answered as soon as the update exists

        assert [u.update_id for u in updates] == [update_id]
        message = updates[0].message
        assert message is not None and message.text == "/status web-1"
        assert message.entities[0].type == "bot_command" and message.entities[0].length == len("/status")

        # Without confirming, the update is delivered again; the offset drops it.
        assert [u.update_id for u in await bot.get_updates(timeout=0)] == [update_id]
        assert await bot.get_updates(offset=update_id + 1, timeout=0) == ()
        later = fake_telegram.add_message("again")
        assert later > update_id
        assert [u.update_id for u in await bot.get_updates(offset=update_id + 1, timeout=1)] == [later]


async def test_button_press_round_trip(fake_telegram: FakeTelegram) -> None:
    async with _bot(fake_telegram) as bot:
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="yes")]])
        asked = await bot.send_message(1001, "Restart nginx?", reply_markup=keyboard)
        fake_telegram.press_button("yes")
        (update,) = await bot.get_updates(timeout=1)
        query = update.callback_query
        assert query is not None and query.data == "yes"
        assert query.message is not None and query.message.message_id == asked.message_id
        assert await bot.answer_callback_query(query.id) is True
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)query is too old"):
            await bot.answer_callback_query(query.id)

        edited = await bot.edit_message_text("Restarted.", chat_id=1001, message_id=asked.message_id)
        assert edited.reply_markup is None  # an edit without reply_markup drops the keyboard
        with pytest.raises(telegram.error.BadRequest, match="not modified"):
            await bot.edit_message_text("Restarted.", chat_id=1001, message_id=asked.message_id)

    assert fake_telegram.message_texts(1001) == ["Restarted."]


async def test_rate_limit_fault_surfaces_as_retry_after(fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next("sendMessage", status=429, retry_after=7)
    async with _bot(fake_telegram) as bot:
        with pytest.raises(telegram.error.RetryAfter) as caught:
            await bot.send_message(1001, "hello")
        assert _seconds(caught.value.retry_after) == 7
        fake_telegram.fail_next("sendMessage", status=502)
        with pytest.raises(telegram.error.NetworkError, match="Bad Gateway"):
            await bot.send_message(1001, "hello")
        await bot.send_message(1001, "hello")

    calls = fake_telegram.calls_to("sendMessage")
    assert [(c.status, c.faulted) for c in calls] == [(429, True), (502, True), (200, False)]
    assert calls[0].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    assert fake_telegram.sent_texts() == ["hello"]


async def test_down_refuses_connections_and_up_restores_same_port(fake_telegram: FakeTelegram) -> None:
    url = fake_telegram.api_url
    async with _bot(fake_telegram) as bot:
        await bot.send_message(1001, "before")
        fake_telegram.down()
        with pytest.raises(telegram.error.NetworkError):
            await bot.send_message(1001, "during")
        fake_telegram.up()
        assert fake_telegram.api_url == url
        await bot.send_message(1001, "after")
    assert fake_telegram.sent_texts() == ["before", "after"]


async def test_down_drops_a_pending_long_poll(fake_telegram: FakeTelegram) -> None:
    async with _bot(fake_telegram) as bot:
        poll = asyncio.create_task(bot.get_updates(timeout=10))
        await fake_telegram.wait_for("getUpdates")
        fake_telegram.down()
        with pytest.raises(telegram.error.NetworkError):
            await asyncio.wait_for(poll, 2)
        fake_telegram.up()


async def test_wrong_token_and_unknown_method(fake_telegram: FakeTelegram) -> None:
    async with httpx.AsyncClient(base_url=fake_telegram.api_url) as http:
        wrong = await http.post("/bot42:NOPE/getMe")
        unknown = await http.post(f"/bot{fake_telegram.token}/frobnicate")
    assert wrong.status_code == 401
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert unknown.status_code == 404 and unknown.json()["ok"] is False
    with pytest.raises(telegram.error.InvalidToken):
        async with Bot("42:NOPE", base_url=f"{fake_telegram.api_url}/bot"):
            pass


async def test_json_body_and_case_insensitive_method(fake_telegram: FakeTelegram) -> None:
    body = {"chat_id": 1001, "text": "123", "reply_markup": json.dumps({"inline_keyboard": []})}
    async with httpx.AsyncClient(base_url=fake_telegram.api_url) as http:
        reply = await http.post(f"/bot{fake_telegram.token}/SENDMESSAGE", json=body)
    assert reply.json()["result"]["text"] == "123"  # free text is never JSON-decoded
    assert fake_telegram.calls[-1].method == "sendMessage"
    assert fake_telegram.calls[-1].params["reply_markup"] == {"inline_keyboard": []}


async def test_realistic_bad_requests(fake_telegram: FakeTelegram) -> None:
    async with _bot(fake_telegram) as bot:
        with pytest.raises(telegram.error.BadRequest, match="parse entities"):
            await bot.send_message(1001, "line<br>break", parse_mode="HTML")
        with pytest.raises(telegram.error.BadRequest, match="too long"):
            await bot.send_message(1001, "x" * 4097)
        too_long_data = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="d" * 65)]])
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)button_data_invalid"):
            await bot.send_message(1001, "pick", reply_markup=too_long_data)
        assert await bot.set_webhook("https://aria.example.test/hook", secret_token="s3cret")
        with pytest.raises(telegram.error.Conflict):
            await bot.get_updates()
        assert (await bot.get_webhook_info()).url == "https://aria.example.test/hook"
        assert await bot.delete_webhook()
        assert await bot.get_updates() == ()
        await bot.set_my_commands([("status", "Show status")])
        assert [c.command for c in await bot.get_my_commands()] == ["status"]


async def test_wait_for_reports_recent_calls_on_timeout(fake_telegram: FakeTelegram) -> None:
    async with _bot(fake_telegram) as bot:
        await bot.send_chat_action(1001, "typing")
    calls = await fake_telegram.wait_for("sendChatAction", predicate=lambda c: c.params["action"] == "typing")
    assert len(calls) == 1
    with pytest.raises(AssertionError, match="sendChatAction"):
        await fake_telegram.wait_for("sendMessage", timeout=0.05)
    assert fake_telegram.wait_for_sync("sendChatAction")[0].ok


# -- FakeOpenAI -------------------------------------------------------------------


async def test_scripted_text_with_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue_text("Disk is at 91%.", usage={"prompt_tokens": 120, "completion_tokens": 5})
    fake_openai.enqueue_text("Second answer.")
    async with _client(fake_openai) as client:
        scripted = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
        estimated = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
        default = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]

    assert scripted.choices[0].message.content == "Disk is at 91%."
    assert scripted.usage is not None
    assert (scripted.usage.prompt_tokens, scripted.usage.completion_tokens, scripted.usage.total_tokens) == (
        120,
        5,
        125,
    )
    assert estimated.usage is not None
    assert estimated.usage.prompt_tokens == estimate_prompt_tokens({"messages": USER})
    assert estimated.usage.prompt_tokens < len(json.dumps(USER).encode())
    assert estimated.usage.completion_tokens == estimate_completion_tokens("Second answer.")
    assert estimated.usage.prompt_tokens_details is not None
    assert estimated.usage.prompt_tokens_details.cached_tokens == 0
    assert default.choices[0].message.content == "OK."
    assert [r.outcome for r in fake_openai.requests] == ["text", "text", "default"]


async def test_tool_call_round_trip(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue_tool_call("run_shell", {"cmd": "df -h /"}, id="call_1")
    fake_openai.enqueue_tool_calls([{"name": "run_shell", "arguments": '{"cmd": "df'}])  # malformed on purpose
    fake_openai.enqueue_text("Disk is fine.")
    async with _client(fake_openai) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=USER, tools=TOOLS)  # type: ignore[arg-type]
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert first.choices[0].finish_reason == "tool_calls"
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == (  # type: ignore[union-attr]
            "call_1",
            "run_shell",
            {"cmd": "df -h /"},
        )
        broken = await client.chat.completions.create(model="gpt-4o", messages=USER, tools=TOOLS)  # type: ignore[arg-type]
        assert broken.choices[0].message.tool_calls[0].function.arguments == '{"cmd": "df'  # type: ignore[index, union-attr]
        history = [
            *USER,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_1", "content": "/dev/sda1 91%"},
        ]
        final = await client.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS)  # type: ignore[arg-type]

    assert final.choices[0].message.content == "Disk is fine."
    sent = fake_openai.requests[-1].body
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "/dev/sda1 91%"}
    assert sent["tools"] == TOOLS
    assert len(fake_openai.requests_for("gpt-4o")) == 3


async def test_rate_limit_exposes_retry_after_header(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue_error(429, retry_after=7)
    async with _client(fake_openai) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_malformed_body_raises_json_error(fake_openai: FakeOpenAI) -> None:
    # openai 3.x does not wrap this: a 200 with broken JSON raises JSONDecodeError.
    fake_openai.enqueue_malformed()
    async with _client(fake_openai) as client:
        with pytest.raises(json.JSONDecodeError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]


async def test_hang_times_out_client(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue_hang(30)
    started = time.monotonic()
    async with _client(fake_openai, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
async def test_completion_tokens_clamped_to_cap(fake_openai: FakeOpenAI, cap_field: str) -> None:
    fake_openai.enqueue_text("word " * 200)
    async with _client(fake_openai) as client:
        reply = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,  # type: ignore[arg-type]
            **{cap_field: 10},  # type: ignore[arg-type]
        )
    assert reply.usage is not None and reply.usage.completion_tokens == 10
    assert reply.choices[0].finish_reason == "length"
    assert len(reply.choices[0].message.content or "") <= 40


async def test_per_model_script_and_sticky_failure(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue_text("from fallback", model="fallback-model")
    fake_openai.enqueue_text("from anyone")
    fake_openai.fail_model("primary-model", status=503, retry_after=1)
    async with _client(fake_openai) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="primary-model", messages=USER)  # type: ignore[arg-type]
        fallback = await client.chat.completions.create(model="fallback-model", messages=USER)  # type: ignore[arg-type]
        fake_openai.clear_model_faults()
        primary = await client.chat.completions.create(model="primary-model", messages=USER)  # type: ignore[arg-type]
        models = [m.id async for m in client.models.list()]

    assert fallback.choices[0].message.content == "from fallback"
    assert fallback.model == "fallback-model"
    assert primary.choices[0].message.content == "from anyone"
    assert [r.outcome for r in fake_openai.requests_for("primary-model")] == ["model_fault:503", "text"]
    assert "fallback-model" in models


async def test_auth_stream_and_outage(fake_openai: FakeOpenAI) -> None:
    fake_openai.api_key = "sk-test"
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    async with _client(fake_openai) as client:
        fake_openai.enqueue_text("streamed in pieces")
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True,  # type: ignore[arg-type]
                                                      stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed in pieces"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert fake_openai.completions[-1].stream and not fake_openai.completions[-1].closed_early
        fake_openai.down()
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
        fake_openai.up()
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "OK."


# -- network tripwire ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["example.com", "10.1.2.3", "2001:db8::1", "api.telegram.org"])
def test_tripwire_rejects_remote_hosts(network_tripwire: NetworkTripwire, host: str) -> None:
    with network_tripwire.expect_block() as seen, pytest.raises(TripwireViolation, match="network tripwire"):
        network_tripwire.check_host(host, 443)
    assert host in seen[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "[::1]", None])
def test_tripwire_allows_loopback(network_tripwire: NetworkTripwire, host: str | None) -> None:
    network_tripwire.check_host(host, 80)
    assert network_tripwire.violations == []


@pytest.mark.parametrize("url", ["http://example.com/", "http://10.1.2.3/"])
async def test_tripwire_blocks_async_http_clients(network_tripwire: NetworkTripwire, url: str) -> None:
    # example.com is stopped at getaddrinfo (no DNS query); 10.1.2.3 at connect.
    with network_tripwire.expect_block() as seen, pytest.raises(Exception):  # noqa: B017 - anyio may wrap it
        async with httpx.AsyncClient() as http:
            await http.get(url, timeout=2)
    assert "attempted connection to" in seen[0]


def test_tripwire_blocks_plain_sockets(network_tripwire: NetworkTripwire) -> None:
    with network_tripwire.expect_block(), pytest.raises(TripwireViolation):
        socket.create_connection(("10.1.2.3", 80), timeout=1)
    with network_tripwire.expect_block(), socket.socket() as raw, pytest.raises(TripwireViolation):
        raw.connect(("10.1.2.3", 80))


async def test_tripwire_catches_swallowed_errors(network_tripwire: NetworkTripwire) -> None:
    # PTB pointed at the real API: it wraps the error into NetworkError, but the
    # attempt is still recorded, so the autouse fixture would fail the test.
    with network_tripwire.expect_block() as seen, pytest.raises(telegram.error.NetworkError):
        async with Bot("123456:TEST-TOKEN"):
            pass
    assert "api.telegram.org" in seen[0]


def test_tripwire_guard_fails_test_at_exit(network_tripwire: NetworkTripwire) -> None:
    with (
        network_tripwire.expect_block(),
        pytest.raises(pytest.fail.Exception, match=r"10\.1\.2\.3"),
        tripwire_guard(),
        contextlib.suppress(RuntimeError),  # swallowed, like careless code would
    ):
        socket.create_connection(("10.1.2.3", 80), timeout=1)
