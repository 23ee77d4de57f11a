"""The one resilient HTTP layer every skill uses: explicit timeouts, bounded retries, a circuit breaker.

Policy, per request:

* Before each attempt the circuit breaker is asked; an open circuit raises ConnectorDown at once, without touching
  the network. A half-open circuit lets one probe through, and a probe gets a single attempt: it exists to find
  out whether the service is back, not to hammer it.
* Connection errors, timeouts and the statuses 408/409/425/429/500/502/503/504 are retried, at most
  `max_attempts` attempts in all. The wait before the next attempt is max(Retry-After, in seconds or as an
  HTTP-date; jittered exponential backoff, base 0.5 s, cap 30 s). A wait that would pass the caller's `deadline`
  (a `time.monotonic()` value) or `max_wait` is not taken: the request gives up instead.
* Every failed attempt is a `failure` row (component `connector:<name>`, handling `retried`, or `degraded` for the
  last one). Messages name the method and the URL without its query string or credentials.
* Giving up records a failure on the breaker (with the Retry-After, so the circuit stays open at least that long)
  and raises ConnectorDown; any other response, 4xx included, is a success for the breaker and is returned.
  After exhausted retries, `last_status(exc)` gives the last HTTP status seen, if there was one.
* Callers never see a raw httpx exception: failures become ConnectorDown, a malformed or non-HTTP URL ToolError.
* A connector made with `per_host=True` keeps one breaker per host (`connector:<name>:<host>`): for connectors
  that reach many unrelated sites (the web skill), where one dead site must not close off the rest.
* Every attempt counts as one outbound call in `calls_today()` and in the ledger flag `calls:<name>:<local date>`.
* A connector made with a `guard` (a FetchAllow) reaches only the addresses `aria.netguard` allows: a refused address
  literal or metadata name is refused before the breaker or the network is asked, and every connection resolves
  its host once, checks every address, and connects only to a checked one (DNS rebinding cannot slip in between).
  A refusal raises AddressRefused (a ToolError: not retried, not a breaker failure). Such a connector uses no
  environment proxy: a proxy would resolve names itself, past the check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from aria.breaker import BreakerBoard, CircuitBreaker
from aria.errors import ConnectorDown, ProviderError, RetryableProviderError, ToolError
from aria.ledger import Ledger
from aria.ledger.models import Handling
from aria.netguard import AddressGuard, FetchAllow, Resolver, system_resolver
from aria.retry import RETRYABLE_STATUSES, backoff, parse_retry_after

RETRY_STATUSES = RETRYABLE_STATUSES
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=20.0, write=10.0, pool=5.0)

Sleep = Callable[[float], Awaitable[None]]


def safe_url(url: str | httpx.URL) -> str:
    """A URL fit for messages and the ledger: no credentials, no query string, no fragment."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def last_status(exc: BaseException) -> int | None:
    """The HTTP status behind a ConnectorDown raised after exhausted retries, if one was received."""
    cause = exc.__cause__
    return cause.status if isinstance(cause, ProviderError) else None


@dataclass
class _Call:
    """One request's progress through its attempts."""

    method: str
    url: str
    target: str  # safe_url(url): what messages show
    breaker: CircuitBreaker
    deadline: float | None
    run_id: int | None
    probe: bool = False
    gave_up: str = ""


class Connectors:
    """Named HTTP connectors, one httpx client and one breaker (or one per host) each."""

    def __init__(self, ledger: Ledger, board: BreakerBoard, *, user_agent: str = "Aria/0.1",
                 sleep: Sleep = asyncio.sleep, tz: dt.tzinfo = dt.UTC, max_wait: float = 60.0,
                 verify: ssl.SSLContext | bool = True, resolver: Resolver = system_resolver) -> None:
        self.ledger = ledger
        self.resolver = resolver  # what guarded connectors resolve host names with
        self.board = board
        self.user_agent = user_agent
        self.tz = tz
        self.max_wait = max_wait
        self.sleep = sleep
        self._verify = verify
        self._connectors: dict[str, Connector] = {}
        self._counts: dict[str, int] = {}
        self._day = ""
        self._lock = threading.Lock()

    def get(self, name: str, *, timeout: httpx.Timeout | None = None, max_attempts: int = 3,
            per_host: bool = False, guard: FetchAllow | None = None) -> Connector:
        """The connector called `name`, created on first use (later calls get it as first configured).

        With `per_host`, each host gets its own breaker (`connector:<name>:<host>`), so one dead site cannot
        open the circuit for every other site reached through the same connector. With `guard`, it reaches only
        public addresses and those the FetchAllow allows (see the module docstring).
        """
        with self._lock:
            connector = self._connectors.get(name)
            if connector is None:
                address_guard = AddressGuard(guard, self.resolver) if guard is not None else None
                transport = GuardedTransport(address_guard, verify=self._verify) if address_guard else None
                client = httpx.AsyncClient(
                    timeout=timeout or DEFAULT_TIMEOUT, headers={"User-Agent": self.user_agent},
                    follow_redirects=False, verify=self._verify, transport=transport,
                )
                connector = Connector(name, self, client, max_attempts=max_attempts, per_host=per_host,
                                      guard=address_guard)
                self._connectors[name] = connector
            return connector

    def calls_today(self) -> dict[str, int]:
        """Outbound calls per connector since local midnight (every attempt counts)."""
        with self._lock:
            return dict(self._counts) if self._day == self._today() else {}

    def count_call(self, name: str) -> None:
        """Count one outbound call, in memory and in the ledger's `calls:<name>:<date>` flag."""
        key_day = self._today()
        with self._lock:
            if key_day != self._day:
                self._day, self._counts = key_day, {}
            if name not in self._counts:  # continue today's count after a restart
                self._counts[name] = int(self.ledger.get_flag(f"calls:{name}:{key_day}") or 0)
            self._counts[name] += 1
            count = self._counts[name]
        self.ledger.set_flag(f"calls:{name}:{key_day}", str(count))

    async def aclose(self) -> None:
        """Close every connector's HTTP client."""
        with self._lock:
            connectors = list(self._connectors.values())
            self._connectors.clear()
        for connector in connectors:
            await connector.aclose()

    def _today(self) -> str:
        return self.ledger.now().astimezone(self.tz).date().isoformat()


class Connector:
    """One named outside service: retries, breaker checks and failure rows around an httpx client."""

    def __init__(self, name: str, owner: Connectors, client: httpx.AsyncClient, *, max_attempts: int,
                 per_host: bool, guard: AddressGuard | None = None) -> None:
        self.name = name
        self.guard = guard
        self.component = f"connector:{name}"
        self.max_attempts = max(1, max_attempts)
        self.per_host = per_host
        self.breaker = owner.board.get(self.component)
        self._owner = owner
        self._client = client

    def breaker_for(self, url: str | httpx.URL) -> CircuitBreaker:
        """The breaker a request to `url` goes through."""
        if not self.per_host:
            return self.breaker
        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL:
            host = ""
        return self._owner.board.get(f"{self.component}:{host}") if host else self.breaker

    async def request(self, method: str, url: str, *, deadline: float | None = None, run_id: int | None = None,
                      **kwargs: Any) -> httpx.Response:
        """Send a request and read the response, retrying as the module docstring says."""
        return await self._send_call(self._call(method, url, deadline, run_id), stream=False, kwargs=kwargs)

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, deadline: float | None = None, run_id: int | None = None,
                     **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """Open a response whose body is read by the caller (for size-limited downloads).

        Retries happen only until headers arrive; a failure while the caller reads the body becomes ConnectorDown.
        """
        call = self._call(method, url, deadline, run_id)
        response = await self._send_call(call, stream=True, kwargs=kwargs)
        try:
            yield response
        except (httpx.TransportError, httpx.DecodingError) as exc:
            error = ProviderError(f"{call.method} {call.target}: reading the body failed: {_describe(exc)}")
            self._give_up(call, error)
            raise ConnectorDown(self.name, str(error)) from error
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.aclose()

    # attempts ---------------------------------------------------------------------------------------------

    def _call(self, method: str, url: str, deadline: float | None, run_id: int | None) -> _Call:
        return _Call(method=method.upper(), url=url, target=safe_url(url), breaker=self.breaker_for(url),
                     deadline=deadline, run_id=run_id)

    async def _send_call(self, call: _Call, *, stream: bool, kwargs: dict[str, Any]) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableProviderError),
            wait=self._wait,
            stop=lambda state: self._should_stop(call, state),
            sleep=self._owner.sleep,
            before_sleep=lambda state: self._record(call, _outcome_error(state), "retried"),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._attempt(call, stream, kwargs)
        except ProviderError as exc:
            self._give_up(call, exc)
            raise ConnectorDown(self.name, f"{exc}{call.gave_up}") from exc
        call.breaker.record_success()
        return response

    async def _attempt(self, call: _Call, stream: bool, kwargs: dict[str, Any]) -> httpx.Response:
        options = dict(kwargs)  # each attempt builds its request afresh from the caller's arguments
        send_options = {k: options.pop(k) for k in ("auth", "follow_redirects") if k in options}
        options.setdefault("timeout", self._timeout_within(call))
        try:
            request = self._client.build_request(call.method, call.url, **options)
        except httpx.InvalidURL as exc:
            raise ToolError(f"not a valid URL: {exc}") from None
        if request.url.scheme not in ("http", "https"):
            raise ToolError(f"refused {call.target}: only http and https URLs are supported")
        if self.guard is not None:
            self.guard.check_target(call.target, request.url.host)
        if not call.breaker.allow():
            until = call.breaker.open_until
            when = until.strftime("%H:%M:%S UTC") if until else "its probe reports"
            raise ConnectorDown(self.name, f"circuit open until {when} (recent calls to {call.target} failed)")
        call.probe = call.breaker.state == "half_open"
        self._owner.count_call(self.name)
        try:
            response = await self._client.send(request, stream=stream, **send_options)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            error_class = ProviderError if _certificate_rejected(exc) else RetryableProviderError
            raise error_class(f"{call.method} {call.target}: {_describe(exc)}") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise ProviderError(f"{call.method} {call.target}: {_describe(exc)}") from exc
        if response.status_code in RETRY_STATUSES:
            await response.aclose()
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._owner.ledger.now())
            raise RetryableProviderError(
                f"{call.method} {call.target}: HTTP {response.status_code} {response.reason_phrase}".rstrip(),
                status=response.status_code, retry_after=retry_after,
            )
        return response

    def _timeout_within(self, call: _Call) -> httpx.Timeout:
        """The client's timeouts, clipped so one attempt cannot run past the deadline."""
        configured = self._client.timeout
        if call.deadline is None:
            return configured
        left = call.deadline - time.monotonic()
        if left <= 0:
            raise ConnectorDown(self.name, f"no time left for {call.method} {call.target}")

        def clip(value: float | None) -> float:
            return left if value is None else min(value, left)

        return httpx.Timeout(connect=clip(configured.connect), read=clip(configured.read),
                             write=clip(configured.write), pool=clip(configured.pool))

    def _wait(self, state: RetryCallState) -> float:
        error = _outcome_error(state)
        retry_after = error.retry_after if isinstance(error, ProviderError) else None
        return backoff(state.attempt_number, retry_after)

    def _should_stop(self, call: _Call, state: RetryCallState) -> bool:
        wait = state.upcoming_sleep
        if call.probe:
            call.gave_up = " (half-open probe failed)"
        elif state.attempt_number >= self.max_attempts:
            call.gave_up = f" (gave up after {state.attempt_number} attempts)"
        elif call.deadline is not None and time.monotonic() + wait > call.deadline:
            call.gave_up = f" (gave up: waiting {wait:.1f}s for a retry would pass the deadline)"
        elif wait > self._owner.max_wait:
            call.gave_up = f" (gave up: the service asked for a {wait:.0f}s wait)"
        else:
            return False
        return True

    def _record(self, call: _Call, error: BaseException, handling: Handling) -> None:
        self._owner.ledger.add_failure(self.component, error, handling, run_id=call.run_id)

    def _give_up(self, call: _Call, error: ProviderError) -> None:
        self._record(call, error, "degraded")
        call.breaker.record_failure(str(error), retry_after=error.retry_after)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses an AddressGuard checked for this connection."""

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        """Resolve `host` once, check every address, then connect to the first checked address that answers."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.guard.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failed: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:  # TLS still names `host` (SNI, certificate check): httpcore passes the origin
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        assert failed is not None  # resolve() never returns an empty list
        raise failed

    async def connect_unix_socket(self, path: str,
                                  timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        """Refused: a guarded connector reaches hosts by address only."""
        raise httpcore.ConnectError("refused: a guarded connector does not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        """As the inner backend sleeps."""
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with every connection made through a GuardedBackend."""

    def __init__(self, guard: AddressGuard, *, verify: ssl.SSLContext | bool = True) -> None:
        context = httpx.create_ssl_context(verify=verify)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        super().__init__(verify=context, limits=limits, trust_env=False)
        # httpx offers no network-backend option, but its transport only wraps an httpcore pool, and httpcore's
        # pool takes one: swap in the same pool with the guarded backend. tests/test_skill_web.py fails if this
        # ever stops taking effect (a name resolving to loopback would be fetched).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(guard),
        )


def _outcome_error(state: RetryCallState) -> BaseException:
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None:  # tenacity only waits and sleeps after a failed attempt
        raise RuntimeError("retry hook called without a failed attempt")
    return error


def _describe(exc: httpx.HTTPError) -> str:
    """An httpx error as `Type: message`, without the URL httpx sometimes includes."""
    text = str(exc)
    try:
        url = str(exc.request.url)
    except RuntimeError:  # no request attached
        url = ""
    if url and url in text:
        text = text.replace(url, safe_url(url))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _certificate_rejected(exc: BaseException) -> bool:
    """True when a connection failed because the server's TLS certificate did not verify (not worth retrying)."""
    seen: BaseException | None = exc
    for _ in range(8):  # exception chains are short; the bound guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
