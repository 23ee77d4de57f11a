"""The ASGI app in webhook mode: the secret token, duplicate updates, malformed bodies, /healthz, serving."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from telegram.ext import Application

from aria.app import Aria
from aria.errors import ConfigError
from aria.events import EventIngress
from aria.ledger import Event, Run
from aria.telegram.bot import build_application, channel_of
from aria.telegram.serve import serve
from aria.web import build_web_app
from tests.conftest import OWNER, STRANGER
from tests.fakes import make_update_json

WEBHOOK_SECRET = "hook-Secret_0123456789"
WEBHOOK_URL = "https://aria.example.test"


@dataclass
class Served:
    """Aria and its Application running in webhook mode, with a client on the ASGI app."""

    aria: Aria
    application: Application  # type: ignore[type-arg]
    client: httpx.AsyncClient

    def events(self) -> list[Event]:
        with self.aria.ledger.read() as s:
            return list(s.exec(select(Event).order_by(Event.id)))

    def runs(self) -> list[Run]:
        with self.aria.ledger.read() as s:
            return list(s.exec(select(Run).where(Run.trigger != "schedule")))


def webhook_settings(fake_telegram: Any) -> dict[str, Any]:
    return {"telegram_bot_token": fake_telegram.token, "telegram_api_url": fake_telegram.api_url,
            "webhook_url": WEBHOOK_URL, "webhook_secret": WEBHOOK_SECRET}


@contextlib.asynccontextmanager
async def running_webhook_app(aria: Aria) -> AsyncIterator[Served]:
    """Start the Application as serve does in webhook mode (no updater), without uvicorn: the client talks ASGI."""
    application = build_application(aria)
    await application.initialize()
    await aria.start(channel_of(application))
    await application.start()
    ingress = EventIngress(aria, channel_of(application))
    app = build_web_app(aria, application, ingress=ingress)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aria.test")
    try:
        yield Served(aria, application, client)
    finally:
        await client.aclose()
        await ingress.stop()
        if application.running:
            await application.stop()
        await aria.stop()
        await application.shutdown()


@pytest.fixture
async def served(make_aria: Callable[..., Aria], fake_telegram: Any) -> AsyncIterator[Served]:
    async with running_webhook_app(make_aria(**webhook_settings(fake_telegram))) as s:
        yield s


async def post_update(served: Served, update: dict[str, Any] | bytes, secret: str | None = WEBHOOK_SECRET
                      ) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    body = update if isinstance(update, bytes) else make_update_json(update)
    return await served.client.post("/telegram", content=body, headers=headers)


async def test_missing_or_wrong_secret_is_refused_and_nothing_runs(served: Served, fake_telegram: Any,
                                                                   fake_openai: Any) -> None:
    update = fake_telegram.make_message_update("delete everything", user_id=OWNER)
    missing = await post_update(served, update, secret=None)
    wrong = await post_update(served, update, secret="hook-Secret_0123456780")
    assert (missing.status_code, wrong.status_code) == (401, 403)
    assert served.application.update_queue.qsize() == 0  # nothing was handed to python-telegram-bot
    await asyncio.sleep(0.2)
    assert fake_telegram.calls_to("sendMessage") == [] and fake_openai.completions == [] and served.runs() == []
    assert [(e.source, e.status, e.verified, e.reason) for e in served.events()] == [
        ("telegram-update", "refused", False, "missing secret token"),
        ("telegram-update", "refused", False, "wrong secret token")]
    assert WEBHOOK_SECRET not in wrong.text + missing.text


async def test_right_secret_update_is_answered(served: Served, fake_telegram: Any, fake_openai: Any) -> None:
    fake_openai.enqueue_text("Disk is fine.")
    response = await post_update(served, fake_telegram.make_message_update("how is the disk?", user_id=OWNER))
    assert response.status_code == 200
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Disk is fine.")
    (run,) = served.runs()
    assert (run.channel, run.chat_id, run.request, run.status) == ("telegram", OWNER, "how is the disk?", "ok")


async def test_the_same_update_delivered_twice_is_handled_once(served: Served, fake_telegram: Any,
                                                               fake_openai: Any) -> None:
    fake_openai.enqueue_text("Once.")
    update = fake_telegram.make_message_update("say it once", user_id=OWNER)
    first, again = await post_update(served, update), await post_update(served, update)
    assert (first.status_code, again.status_code) == (200, 200) and again.json() == {"status": "duplicate"}
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Once.")
    await asyncio.sleep(0.2)
    assert len(served.runs()) == 1 and len(fake_openai.completions) == 1
    assert [(e.status, e.delivery_id) for e in served.events()] == [
        ("accepted", str(update["update_id"])), ("duplicate", None)]


async def test_a_strangers_update_costs_one_row_even_when_redelivered(served: Served, fake_telegram: Any,
                                                                       fake_openai: Any) -> None:
    update = fake_telegram.make_message_update("hello?", user_id=STRANGER)
    for _ in range(2):
        assert (await post_update(served, update)).status_code == 200
    for _ in range(100):  # both copies go through the owner guard
        if served.application.update_queue.empty() and any(e.user_id == STRANGER for e in served.events()):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert fake_telegram.sent_texts(STRANGER) == [] and fake_openai.completions == [] and served.runs() == []
    assert [(e.source, e.status, e.user_id) for e in served.events()] == [("telegram", "refused", STRANGER)]


async def test_malformed_bodies_get_400_and_a_row(served: Served, fake_openai: Any) -> None:
    not_json = await post_update(served, b"{not json")
    no_id = await post_update(served, b'{"message": {}}')
    too_deep = await post_update(served, b"[" * 100_000 + b"]" * 100_000)
    assert (not_json.status_code, no_id.status_code, too_deep.status_code) == (400, 400, 400)
    assert [(e.status, e.verified, e.reason) for e in served.events()] == [
        ("refused", True, "malformed update (JSONDecodeError)"), ("refused", True, "malformed update (KeyError)"),
        ("refused", True, "malformed update (RecursionError)")]
    assert served.application.update_queue.qsize() == 0 and fake_openai.completions == []


async def test_healthz_is_200_when_ready_and_503_when_the_scheduler_stops(served: Served) -> None:
    ready = await served.client.get("/healthz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "database": "ok", "ledger": "writable", "scheduler": "running",
                            "telegram": "webhook",
                            "open_circuits": [], "half_open_circuits": []}
    for _ in range(3):  # the breaker threshold
        served.aria.board.get("connector:status").record_failure("down", retry_after=60)
    degraded = await served.client.get("/healthz")
    assert degraded.status_code == 200 and degraded.json()["open_circuits"] == ["connector:status"]
    served.aria.scheduler.shutdown()
    await asyncio.sleep(0)  # APScheduler's asyncio scheduler stops on the loop's next turn
    stopped = await served.client.get("/healthz")
    assert stopped.status_code == 503 and stopped.json()["scheduler"] == "stopped"


async def test_healthz_is_503_when_the_database_is_unreachable(served: Served) -> None:
    data_dir = served.aria.settings.data_dir
    served.aria.ledger.engine.dispose()
    aside = data_dir.with_name("data-aside")
    data_dir.rename(aside)
    data_dir.write_text("a file where the data folder should be")  # SQLite cannot open data/aria.db now
    try:
        response = await served.client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["ready"] is False and response.json()["database"] == "OperationalError"
    finally:
        data_dir.unlink()
        aside.rename(data_dir)


async def test_serve_webhook_registers_the_webhook_and_serves_over_http(make_aria: Callable[..., Aria],
                                                                        fake_telegram: Any, fake_openai: Any) -> None:
    aria = make_aria(**webhook_settings(fake_telegram))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(aria, webhook=True, stop=stop, sock=sock))
    (registered,) = await fake_telegram.wait_for("setWebhook")
    assert registered.params["url"] == f"{WEBHOOK_URL}/telegram"
    assert registered.params["secret_token"] == WEBHOOK_SECRET
    assert registered.params["allowed_updates"] == ["message", "edited_message", "callback_query"]
    fake_openai.enqueue_text("Over real HTTP.")
    update = make_update_json(fake_telegram.make_message_update("hello", user_id=OWNER))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(50):  # uvicorn starts right after setWebhook
            with contextlib.suppress(httpx.ConnectError):
                health = await client.get("/healthz")
                break
            await asyncio.sleep(0.05)
        assert health.status_code == 200
        response = await client.post("/telegram", content=update,
                                     headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})
        assert response.status_code == 200
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Over real HTTP.")
    stop.set()
    await asyncio.wait_for(serving, timeout=5)
    assert not aria.scheduler.running  # serve stopped and closed Aria
    assert fake_telegram.calls_to("getUpdates") == []


async def test_serve_webhook_refuses_to_start_without_a_secret(make_aria: Callable[..., Aria],
                                                               fake_telegram: Any, tmp_path: Path) -> None:
    settings = webhook_settings(fake_telegram) | {"webhook_secret": None}
    with pytest.raises(ConfigError, match="ARIA_WEBHOOK_SECRET"):
        await serve(make_aria(**settings), webhook=True)
    with pytest.raises(ConfigError, match="ARIA_WEBHOOK_URL"):
        await serve(make_aria(**(webhook_settings(fake_telegram) | {"webhook_url": "http://plain.test"})), webhook=True)
    assert fake_telegram.calls == []
