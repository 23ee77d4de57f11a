"""One MCP server's connection: started in the background, watched, reconnected with backoff; calls go through its
circuit breaker and timeout.

    starting ──connected──> up ──(the server dies, or a listing fails)──> down ──(backoff)──> starting …

A call to a server that is not up, or whose circuit is open, fails at once with ConnectorDown (the answer degrades
and names the server). A call that outlives the server's timeout is abandoned with ConnectorDown too; the session
stays up and its tools stay loaded (only a dead connection takes them away, until it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, Tool

from aria.breaker import CircuitBreaker
from aria.errors import ConnectorDown, ToolError
from aria.ledger import Ledger
from aria.mcp.config import ServerConfig
from aria.mcp.tools import render_result

log = logging.getLogger(__name__)
ServerState = Literal["starting", "up", "down", "stopped"]
OnTools = Callable[["ServerConnection", list[Tool]], None]
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
WATCH_EVERY = 30.0  # seconds between listings that check the server is alive (and its tools unchanged)
MAX_PAGES = 20
STABLE = 60.0  # seconds up after which a server that dies counts as a new outage, with the backoff reset


class ServerConnection:
    """A supervised session with one MCP server."""

    def __init__(self, config: ServerConfig, ledger: Ledger, breaker: CircuitBreaker, on_tools: OnTools, *,
                 log_dir: Path | None = None, target: Any = None, backoff_first: float = BACKOFF_FIRST,
                 watch_every: float = WATCH_EVERY) -> None:
        self.config = config
        self.ledger = ledger
        self.breaker = breaker
        self.on_tools = on_tools
        self.state: ServerState = "starting"
        self.error: str | None = None
        self.tools: list[Tool] = []
        self.failures = 0  # consecutive failed connections (a session shorter than STABLE counts as one)
        self._up_since: float | None = None
        self._target = target  # an in-process server for tests, instead of the configured transport
        self._log_dir = log_dir
        self.backoff_first = backoff_first
        self._watch_every = watch_every
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set while the server is up
        self.settled = asyncio.Event()  # set once the first connection succeeded or failed (`aria mcp` waits)

    @property
    def name(self) -> str:
        """The server's configured name."""
        return self.config.name

    @property
    def service(self) -> str:
        """How a degraded answer names it."""
        return f"MCP server {self.name}"

    def start(self) -> None:
        """Connect in the background; never waits for the server."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.name}")

    async def stop(self) -> None:
        """Close the session (a stdio server's process ends with it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = "stopped"

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call one tool: ConnectorDown when the server is not up, its circuit is open, it hangs past its timeout
        or dies meanwhile; ToolError when it answers with `isError` or refuses the call."""
        client = self._client
        if client is None or self.state != "up":
            why = self.error or "still starting"
            raise ConnectorDown(self.service, f"not connected ({why}); its tools are unavailable until it is back")
        if not self.breaker.allow():
            until = self.breaker.open_until
            raise ConnectorDown(self.service, "its circuit is open after repeated failures"
                                + (f", until {until:%H:%M:%S} UTC" if until else ""))
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout + 0.5):  # the SDK's own timeout first; this one if it cannot
                result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except TimeoutError:
            raise self._failed(f"no answer within {timeout:g}s") from None
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                self._lost.set()
                raise self._failed("the connection closed during the call; reconnecting") from None
            if exc.error.code == REQUEST_TIMEOUT:
                raise self._failed(f"no answer within {timeout:g}s") from None
            self.breaker.record_success()  # it answered: the server works, the call was refused
            raise ToolError(f"{self.service} refused {tool}: {exc.error.message}") from None
        self.breaker.record_success()
        text = render_result(result)
        if result.is_error:
            raise ToolError(f"{tool} on {self.service} reported an error: {text}")
        return text

    def _failed(self, reason: str) -> ConnectorDown:
        self.breaker.record_failure(reason)
        return ConnectorDown(self.service, reason)

    async def _supervise(self) -> None:
        while True:
            self.state = "starting"
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any way a server fails is reported, then retried
                self._went_down(exc)
            delay = min(BACKOFF_MAX, self.backoff_first * 2 ** min(self.failures - 1, 16))
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        with self._errlog() as errlog:
            client = Client(self._transport(errlog))
            async with asyncio.timeout(max(self.config.timeout, 5.0)):
                await client.__aenter__()
            try:
                async with asyncio.timeout(max(self.config.timeout, 5.0)):
                    tools = await _list_all(client)
                self._lost.clear()
                self._up(client, tools)
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._watch_every):
                            await self._lost.wait()
                    if self._lost.is_set():
                        raise ConnectionError("the connection closed")
                    async with asyncio.timeout(max(self.config.timeout, 5.0)):
                        tools = await _list_all(client)
                    if _fingerprint(tools) != _fingerprint(self.tools):
                        self.tools = tools
                        self.on_tools(self, tools)
            finally:
                self._client = None
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)

    def _up(self, client: Client, tools: list[Tool]) -> None:
        self._client, self.tools = client, tools
        self.state, self.error, self._up_since = "up", None, time.monotonic()
        self.on_tools(self, tools)
        self.connected.set()
        self.settled.set()
        log.info("MCP server %s is up with %d tools", self.name, len(tools))

    def _went_down(self, exc: BaseException) -> None:
        lasted = time.monotonic() - self._up_since if self._up_since is not None else 0.0
        # A server that dies soon after each start keeps backing off (and is reported once, not every cycle).
        self.failures = 1 if lasted >= STABLE else self.failures + 1
        self._up_since = None
        self.state = "down"
        said = self._last_words()
        reason = _reason(exc) + (f"; its stderr says: {said}" if said else "")
        self.error = self.ledger.redact(reason) or type(exc).__name__
        self.settled.set()
        log.warning("MCP server %s is down (attempt %d): %s", self.name, self.failures, self.error)
        if self.failures in (1, 5) or self.failures % 50 == 0:  # the start of an outage, not every retry
            self.ledger.add_failure(f"mcp:{self.name}", ConnectorDown(self.service, self.error), "retried")

    def _last_words(self) -> str | None:
        """The last line a stdio server wrote to its stderr log: usually why it would not start."""
        if self._log_dir is None or self.config.command is None:
            return None
        try:
            with (self._log_dir / f"mcp-{self.name}.log").open("rb") as errlog:
                errlog.seek(0, os.SEEK_END)
                errlog.seek(max(0, errlog.tell() - 2000))
                lines = [line.strip() for line in errlog.read().decode("utf-8", "replace").splitlines()]
        except OSError:
            return None
        said = [line for line in lines if line]
        return said[-1][:200] if said else None

    def _transport(self, errlog: TextIO) -> Any:
        if self._target is not None:
            return self._target
        if self.config.command is not None:
            params = StdioServerParameters(command=self.config.command, args=self.config.args,
                                           env=self.config.resolved_env(dict(os.environ)) or None,
                                           cwd=self.config.cwd)
            return stdio_client(params, errlog=errlog)
        assert self.config.url is not None
        return _http_transport(self.config.url, self.config.resolved_headers(dict(os.environ)))

    @contextlib.contextmanager
    def _errlog(self) -> Iterator[TextIO]:
        """Where a stdio server's stderr goes: a log file per server in the data folder (else Aria's stderr)."""
        if self._log_dir is None:
            yield sys.stderr
            return
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with (self._log_dir / f"mcp-{self.name}.log").open("a", encoding="utf-8") as errlog:
            yield errlog


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    """Streamable HTTP with the configured headers, on an HTTP client that closes with the session."""
    async with (httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http,
                streamable_http_client(url, http_client=http) as streams):
        yield streams


async def _list_all(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="refresh")
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _fingerprint(tools: list[Tool]) -> list[str]:
    return [tool.model_dump_json() for tool in tools]


def _reason(exc: BaseException) -> str:
    """One line for a failure, from the innermost error of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "no answer while connecting"
    if isinstance(exc, MCPError):
        return exc.error.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

