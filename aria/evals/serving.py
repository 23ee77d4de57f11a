"""Run an ASGI app with uvicorn in a background thread, with outage simulation (for `aria eval` and the fakes).

The fakes need a *real* HTTP server so that the real client libraries (and their
connection pools, timeouts and error mapping) are exercised.  ``down()`` really
closes the listening socket, so clients get "connection refused"; ``up()``
listens again on the same port so already-configured clients keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Self, TypeVar

import uvicorn

__all__ = ["ASGIApp", "ServerThread", "wait_until", "wait_until_sync"]

T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger(__name__)


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that stops on an event and tears down without grace.

    uvicorn's own loop polls ``should_exit`` every 100 ms and then waits for
    in-flight requests; a fake that is started and stopped in every test must
    stop in milliseconds and must drop long-polls instead of waiting for them.
    """

    def __init__(self, config: uvicorn.Config, owner: ServerThread) -> None:
        super().__init__(config)
        self._owner = owner
        self._stop_event: asyncio.Event | None = None

    def request_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        def _set() -> None:
            if self._stop_event is not None:
                self._stop_event.set()
            self.should_exit = True

        loop.call_soon_threadsafe(_set)

    async def main_loop(self) -> None:
        # Headers normally refreshed by on_tick(); set them once.
        self.server_state.default_headers = list(self.config.encoded_headers)
        self._stop_event = asyncio.Event()
        self._owner._ready.set()
        if not self.should_exit:
            await self._stop_event.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in getattr(self, "servers", []):
            server.close()
        for sock in sockets or []:
            sock.close()
        # Abort (RST) every open connection: an outage must not let pooled
        # keep-alive connections or pending long-polls carry on.
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        # Let connection_lost() callbacks run before cancelling handlers, so
        # uvicorn sees the cycles as disconnected and does not log errors.
        await asyncio.sleep(0)
        tasks = list(self.server_state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for server in getattr(self, "servers", []):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)


class ServerThread:
    """Serve ``app`` on 127.0.0.1 from a daemon thread.

    The port is chosen by the OS on the first ``start()`` and reused by every
    later ``start()``/``up()``, so URLs handed to clients stay valid.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", name: str = "fake-http") -> None:
        self._app = app
        self.host = host
        self.name = name
        self.port: int | None = None
        self.stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _ThreadServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- public API ---------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} has never been started")
        return f"http://{self.host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 5.0) -> None:
        """Start serving (no-op when already running)."""
        with self._lock:
            if self.is_running:
                return
            self.stopping = False
            sock = self._bind()
            self._ready.clear()
            self._error = None
            self._thread = threading.Thread(
                target=self._run, args=(sock,), name=f"{self.name}:{self.port}", daemon=True
            )
            self._thread.start()
            if not self._ready.wait(timeout):
                raise RuntimeError(f"{self.name} did not start within {timeout}s")
            if self._error is not None:
                raise RuntimeError(f"{self.name} failed to start") from self._error

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; the port stays reserved for a later ``start()``."""
        with self._lock:
            thread, loop, server = self._thread, self._loop, self._server
            if thread is None:
                return
            self.stopping = True
            if loop is not None and server is not None and thread.is_alive():
                with contextlib.suppress(RuntimeError):  # loop already closed
                    server.request_stop(loop)
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"{self.name} did not stop within {timeout}s")
            self._thread = None
            self._loop = None
            self._server = None

    def down(self) -> None:
        """Simulate an outage: new connections are refused, open ones reset."""
        self.stop()

    def up(self) -> None:
        """End an outage: listen again on the same port."""
        self.start()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------

    async def _guarded_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._app(scope, receive, send)
        except asyncio.CancelledError:
            # Handlers (long-polls, hangs) are cancelled on stop/down; that is
            # the intended outcome, not an application error worth logging.
            if not self.stopping:
                raise

    def _bind(self) -> socket.socket:
        # An explicit IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on
        # accepted sockets whose proto is TCP, and without it every response
        # (headers and body written separately) stalls ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        # SO_REUSEADDR lets up() rebind while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port or 0))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    def _run(self, sock: socket.socket) -> None:
        config = uvicorn.Config(
            self._guarded_app,
            host=self.host,
            port=self.port or 0,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            # None keeps uvicorn from calling logging.dictConfig on the test
            # process' logging setup.
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        server = _ThreadServer(config, self)
        self._server = server
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            _log.exception("%s crashed", self.name)
        finally:
            with contextlib.suppress(Exception):
                sock.close()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._ready.set()


def _dump(recent: Sequence[object], limit: int = 20) -> str:
    tail = list(recent)[-limit:]
    if not tail:
        return "  (nothing recorded)"
    return "\n".join(f"  {item!r}" for item in tail)


async def wait_until(
    matches: Callable[[], list[T]],
    *,
    count: int,
    timeout: float,  # noqa: ASYNC109 - a plain deadline, not a cancel scope
    what: str,
    recent: Callable[[], Sequence[object]],
    interval: float = 0.01,
) -> list[T]:
    """Poll ``matches()`` until it has ``count`` items (async tests).

    The fake server runs in another thread, so polling with a short sleep is
    the simplest correct way to observe its state from the test's loop.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = matches()
        if len(found) >= count:
            return found
        if loop.time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} x {what}; got {len(found)}. Recent:\n{_dump(recent())}"
            )
        await asyncio.sleep(interval)


def wait_until_sync(
    matches: Callable[[], list[T]],
    *,
    count: int,
    timeout: float,
    what: str,
    recent: Callable[[], Sequence[object]],
    interval: float = 0.01,
) -> list[T]:
    """Blocking twin of :func:`wait_until` for synchronous tests."""
    deadline = time.monotonic() + timeout
    while True:
        found = matches()
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} x {what}; got {len(found)}. Recent:\n{_dump(recent())}"
            )
        time.sleep(interval)


class ServedFake:
    """Lifecycle shared by the fakes: start, stop, an outage (down/up) and use as a context manager."""

    server: ServerThread

    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def down(self) -> None:
        """Outage: connections are refused until ``up()``."""
        self.server.down()

    def up(self) -> None:
        """Serve again on the same port."""
        self.server.up()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, bytes], dict[str, str]]:
    """Minimal multipart/form-data parser (python-multipart is not a dependency)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("invalid multipart body: no boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    filenames: dict[str, str] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, _, content = part.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = head.decode("utf-8", "replace")
        disposition = next(
            (line for line in headers.split("\r\n") if line.lower().startswith("content-disposition")), ""
        )
        name_match = re.search(r'(?<![a-z])name="([^"]*)"', disposition)
        if not name_match:
            continue
        name = name_match.group(1)
        file_match = re.search(r'filename="([^"]*)"', disposition)
        if file_match is not None:
            files[name] = content
            filenames[name] = file_match.group(1)
        else:
            fields[name] = content.decode("utf-8", "replace")
    return fields, files, filenames
