"""Running Aria on Telegram: long polling with a watchdog, or webhook mode, where Telegram pushes updates to Aria's
ASGI app so an idle Aria makes no Bot API calls at all.

`serve` starts, in order: the Application (initialize), Aria with its Telegram channel (`Aria.start`: outbox
delivery, recovery of what a stopped process left, jobs, scheduler), the Application (start), the webhook
registration (`setWebhook` with the secret token and the allowed update types, pending updates kept) or polling, the
event ingress (re-queueing events left unprocessed), and uvicorn on `ARIA_WEB_HOST:ARIA_WEB_PORT` when there is
something to serve. It stops in the reverse order on SIGINT/SIGTERM (or when `stop` is set): no new requests, event
workers cancelled (their events run after the next start), running handlers finished, `Aria.stop`, the Application
shut down, Aria closed.

The webhook stays registered on shutdown: Telegram keeps the updates that arrive meanwhile and delivers them when the
server is back. `aria run` without --webhook deletes it when polling starts (python-telegram-bot's bootstrap does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
from collections.abc import Iterator
from typing import Any

from aria.app import Aria
from aria.config import Settings, env_name
from aria.errors import ConfigError
from aria.events import EventIngress
from aria.telegram.bot import ALLOWED_UPDATES, build_application, channel_of
from aria.telegram.watchdog import DEFAULT_POLL_TIMEOUT, PollHealth, PollingWatchdog, WatchedRequest

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram"
_TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")  # what setWebhook accepts as secret_token
_GRACE_SECONDS = 10


def webhook_config(settings: Settings) -> tuple[str, str]:
    """The URL to register and the secret token; ConfigError naming each variable that is missing or wrong."""
    problems = []
    url, secret_var = settings.webhook_url, env_name("webhook_secret")
    if not url or not url.startswith("https://"):
        problems.append(f"{env_name('webhook_url')}: set it to the public https:// address that reaches this server "
                        f"(Telegram will post to <it>{WEBHOOK_PATH})")
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        problems.append(f"{secret_var}: set it to a random token; Telegram sends it with every update and requests "
                        "without it are refused")
    elif not _TELEGRAM_SECRET.fullmatch(secret):
        problems.append(f"{secret_var}: use 1-256 characters of A-Z, a-z, 0-9, _ and -")
    if problems:
        raise ConfigError(problems)
    return f"{url}{WEBHOOK_PATH}", secret


def listen(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn, so a port in use is a clear error before anything else starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError([f"{env_name('web_host')}/{env_name('web_port')}: cannot listen on {host}:{port} "
                           f"({exc.strerror})"]) from None
    return sock


def _server(app: Any) -> Any:
    """uvicorn without its own signal handling (serve decides when to stop, and cleans up first); imported here so
    polling mode without events never loads the web stack."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                 timeout_graceful_shutdown=_GRACE_SECONDS))


async def serve(aria: Aria, *, webhook: bool, stop: asyncio.Event | None = None, sock: socket.socket | None = None,
                poll_timeout: int = DEFAULT_POLL_TIMEOUT) -> None:
    """Run Aria on Telegram until SIGINT/SIGTERM or `stop`, then stop cleanly in reverse order.

    Polling mode long-polls with a watchdog that restarts stalled polling; webhook mode registers the webhook and
    serves `/telegram`. Either way `/events/<source>` and `/healthz` are served when there is a reason to listen
    (webhook mode, or event secrets configured); event outcomes reach the owner on Telegram. `sock` is an already
    bound listening socket (tests, socket activation); `poll_timeout` is how long Telegram holds an idle getUpdates.
    """
    url, secret = webhook_config(aria.settings) if webhook else ("", "")
    aria.telegram_mode = "webhook" if webhook else "polling"
    health = None if webhook else PollHealth(aria.ledger)
    application = build_application(aria, get_updates_request=WatchedRequest(health) if health else None)
    channel = channel_of(application)
    ingress = EventIngress(aria, channel)
    async with contextlib.AsyncExitStack() as stack:
        listening = webhook or bool(aria.settings.event_secrets)
        if listening:
            sock = sock or listen(aria.settings.web_host, aria.settings.web_port)
            stack.callback(sock.close)
        if stop is None:
            stop = _stop_on_signals(stack)
        stack.push_async_callback(aria.aclose)
        await application.initialize()
        stack.push_async_callback(application.shutdown)
        await aria.start(channel)
        stack.push_async_callback(aria.stop)
        await application.start()
        stack.push_async_callback(application.stop)
        if webhook:
            await application.bot.set_webhook(url=url, secret_token=secret, allowed_updates=ALLOWED_UPDATES,
                                              drop_pending_updates=False)
        else:
            assert health is not None and application.updater is not None
            watchdog = PollingWatchdog(application, aria.ledger, aria.settings.poll_stall_seconds, health=health,
                                       allowed_updates=ALLOWED_UPDATES, timeout=poll_timeout)
            await watchdog.start_polling()
            stack.push_async_callback(application.updater.stop)
            watchdog.schedule()
        requeued = await ingress.start()
        stack.push_async_callback(ingress.stop)
        tasks = {asyncio.create_task(stop.wait(), name="stop")}
        if listening and sock is not None:
            from aria.web import build_web_app  # the web stack loads only when there is something to serve

            server = _server(build_web_app(aria, application if webhook else None, ingress=ingress))
            serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
            stack.push_async_callback(_stop_server, server, serving)
            tasks.add(serving)
            log.info("listening on %s:%s for %s (%d event(s) re-queued)", *sock.getsockname()[:2],
                     "the Telegram webhook and events" if webhook else "events", requeued)
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if task.get_name() == "stop":
                task.cancel()
        for task in done:
            if task.get_name() == "uvicorn":
                task.result()  # uvicorn ended on its own: surface why


def _stop_on_signals(stack: contextlib.AsyncExitStack) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            log.debug("cannot handle %s here; stop with the stop event instead", sig.name)
            continue
        stack.callback(loop.remove_signal_handler, sig)
    return stop


async def _stop_server(server: Any, serving: asyncio.Task[None]) -> None:
    server.should_exit = True
    await serving
