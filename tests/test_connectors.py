"""The resilient HTTP layer, driven against a real scripted server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from aria.breaker import BreakerBoard
from aria.clock import ManualClock
from aria.connectors import Connectors, last_status
from aria.errors import ConnectorDown, ToolError
from aria.ledger import Failure, Ledger
from aria.retry import parse_retry_after
from tests.conftest import START
from tests.fakes.server import ServerThread


class Script:
    """The server's next responses, in order; `ok` once they run out. Records every request path."""

    def __init__(self) -> None:
        self.queue: list[Response] = []
        self.hits: list[str] = []
        self.delay = 0.0

    def reset(self) -> None:
        self.queue.clear()
        self.hits.clear()
        self.delay = 0.0

    def then(self, *responses: Response) -> None:
        self.queue.extend(responses)

    async def handle(self, request: Request) -> Response:
        self.hits.append(request.url.path)
        # Take the response before any delay: a timed-out request must not consume a later test's script.
        response = self.queue.pop(0) if self.queue else PlainTextResponse("ok")
        if self.delay:
            await asyncio.sleep(self.delay)
        return response


class Sleeps:
    """Stands in for asyncio.sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def status(code: int, retry_after: str | None = None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return PlainTextResponse(f"status {code}", status_code=code, headers=headers)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServerThread, Script]]:
    script = Script()
    app = Starlette(routes=[Route("/{path:path}", script.handle, methods=["GET", "POST"])])
    with ServerThread(app, name="connector-test") as server:
        yield server, script


@pytest.fixture
def script(served: tuple[ServerThread, Script]) -> Script:
    served[1].reset()
    return served[1]


@pytest.fixture
def base(served: tuple[ServerThread, Script]) -> str:
    return served[0].url


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def connectors(ledger: Ledger, sleeps: Sleeps) -> AsyncIterator[Connectors]:
    made = Connectors(ledger, BreakerBoard(ledger, failure_threshold=3, cooldown=30), sleep=sleeps)
    yield made
    await made.aclose()


def failures(ledger: Ledger) -> list[Failure]:
    with ledger.read() as session:
        return list(session.exec(select(Failure).order_by(Failure.id)))  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_success_is_returned_and_counted(connectors: Connectors, script: Script, base: str,
                                               ledger: Ledger) -> None:
    response = await connectors.get("api").request("GET", f"{base}/ping")
    assert (response.status_code, response.text) == (200, "ok")
    assert script.hits == ["/ping"]
    assert connectors.calls_today() == {"api": 1}
    assert ledger.get_flag("calls:api:2026-03-01") == "1"
    assert failures(ledger) == []


async def test_retry_after_in_seconds_sets_the_wait(connectors: Connectors, script: Script, base: str,
                                                    sleeps: Sleeps, ledger: Ledger) -> None:
    script.then(status(503, "7"))
    response = await connectors.get("api").request("GET", f"{base}/x", run_id=None)
    assert response.status_code == 200
    assert sleeps.waits == [7.0]
    assert len(script.hits) == 2
    [row] = failures(ledger)
    assert (row.component, row.handling, row.error_type) == ("connector:api", "retried", "RetryableProviderError")
    assert "HTTP 503" in row.message


async def test_retry_after_as_http_date_sets_the_wait(connectors: Connectors, script: Script, base: str,
                                                      sleeps: Sleeps, clock: ManualClock) -> None:
    when = email.utils.format_datetime(clock.now() + dt.timedelta(seconds=20), usegmt=True)
    script.then(status(429, when))
    response = await connectors.get("api").request("GET", f"{base}/x")
    assert response.status_code == 200
    assert sleeps.waits == [20.0]


def test_retry_after_parsing() -> None:
    assert parse_retry_after("120", START) == 120.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", START) == 30.0
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", START) == 0.0
    assert parse_retry_after("soon", START) is None
    assert parse_retry_after(None, START) is None


async def test_backoff_grows_between_attempts_without_retry_after(connectors: Connectors, script: Script,
                                                                  base: str, sleeps: Sleeps) -> None:
    script.then(status(500), status(502))
    response = await connectors.get("api").request("GET", f"{base}/x")
    assert response.status_code == 200
    first, second = sleeps.waits
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 1.0


async def test_deadline_stops_retries_before_sleeping_past_it(connectors: Connectors, script: Script, base: str,
                                                              sleeps: Sleeps, ledger: Ledger) -> None:
    script.then(status(503, "1"), status(503, "10"))
    deadline = time.monotonic() + 5
    with pytest.raises(ConnectorDown) as caught:
        await connectors.get("api", max_attempts=5).request("GET", f"{base}/x", deadline=deadline)
    assert sleeps.waits == [1.0]
    assert len(script.hits) == 2
    assert "deadline" in caught.value.reason
    assert [f.handling for f in failures(ledger)] == ["retried", "degraded"]


async def test_exhausted_retries_raise_connector_down_with_the_last_status(
        connectors: Connectors, script: Script, base: str, sleeps: Sleeps, ledger: Ledger) -> None:
    script.then(status(503), status(503), status(503))
    connector = connectors.get("api")
    with pytest.raises(ConnectorDown) as caught:
        await connector.request("GET", f"{base}/x")
    assert caught.value.service == "api"
    assert last_status(caught.value) == 503
    assert len(script.hits) == 3 and len(sleeps.waits) == 2
    assert [f.handling for f in failures(ledger)] == ["retried", "retried", "degraded"]
    assert connector.breaker.failures == 1 and connector.breaker.state == "closed"


async def test_client_errors_are_returned_without_retry(connectors: Connectors, script: Script, base: str,
                                                        ledger: Ledger) -> None:
    script.then(status(404))
    response = await connectors.get("api").request("GET", f"{base}/missing")
    assert response.status_code == 404
    assert len(script.hits) == 1
    assert failures(ledger) == []


async def test_connection_refused_is_retried_then_reported(connectors: Connectors, sleeps: Sleeps,
                                                           ledger: Ledger) -> None:
    with pytest.raises(ConnectorDown) as caught:
        await connectors.get("api").request("GET", f"http://127.0.0.1:{closed_port()}/x")
    assert "ConnectError" in caught.value.reason
    assert len(sleeps.waits) == 2
    rows = failures(ledger)
    assert [f.handling for f in rows] == ["retried", "retried", "degraded"]
    assert all("ConnectError" in f.message for f in rows)
    assert connectors.calls_today() == {"api": 3}


async def test_read_timeout_is_retried(connectors: Connectors, script: Script, base: str,
                                       ledger: Ledger) -> None:
    script.delay = 0.2
    connector = connectors.get("slow", timeout=httpx.Timeout(0.05), max_attempts=2)
    with pytest.raises(ConnectorDown) as caught:
        await connector.request("GET", f"{base}/slow")
    assert "ReadTimeout" in caught.value.reason
    assert [f.handling for f in failures(ledger)] == ["retried", "degraded"]


async def test_breaker_opens_refuses_without_network_then_probes(
        connectors: Connectors, script: Script, base: str, clock: ManualClock, ledger: Ledger) -> None:
    connector = connectors.get("api", max_attempts=1)
    script.then(status(500), status(500), status(500))
    for _ in range(3):
        with pytest.raises(ConnectorDown):
            await connector.request("GET", f"{base}/x")
    assert connector.breaker.state == "open"

    with pytest.raises(ConnectorDown) as caught:
        await connector.request("GET", f"{base}/x")
    assert "circuit open until 12:00:30 UTC" in caught.value.reason
    assert len(script.hits) == 3  # the refusal never reached the server
    assert len(failures(ledger)) == 3

    clock.advance(30)
    assert connector.breaker.state == "half_open"
    response = await connector.request("GET", f"{base}/x")
    assert response.status_code == 200
    assert connector.breaker.state == "closed"


async def test_a_failed_probe_gets_one_attempt_and_reopens(connectors: Connectors, script: Script, base: str,
                                                           clock: ManualClock, sleeps: Sleeps) -> None:
    connector = connectors.get("api", max_attempts=3)
    for _ in range(3):
        connector.breaker.record_failure("earlier outage")
    clock.advance(30)
    script.then(status(503), status(503), status(503))
    with pytest.raises(ConnectorDown) as caught:
        await connector.request("GET", f"{base}/x")
    assert "probe" in caught.value.reason
    assert len(script.hits) == 1 and sleeps.waits == []
    assert connector.breaker.state == "open"
    assert connector.breaker.open_until == clock.now() + dt.timedelta(seconds=30)


async def test_open_circuit_survives_a_restart(tmp_path: Path, clock: ManualClock, script: Script, base: str,
                                               sleeps: Sleeps) -> None:
    first_ledger = Ledger.open(tmp_path / "aria.db", clock=clock)
    first = Connectors(first_ledger, BreakerBoard(first_ledger, failure_threshold=1), sleep=sleeps)
    script.then(status(503, "120"))
    with pytest.raises(ConnectorDown):
        await first.get("api", max_attempts=1).request("GET", f"{base}/x")
    await first.aclose()

    second_ledger = Ledger.open(tmp_path / "aria.db", clock=clock)
    second = Connectors(second_ledger, BreakerBoard(second_ledger, failure_threshold=1), sleep=sleeps)
    clock.advance(60)  # past the cooldown, but not past the Retry-After the service asked for
    with pytest.raises(ConnectorDown) as caught:
        await second.get("api").request("GET", f"{base}/x")
    await second.aclose()
    assert "circuit open" in caught.value.reason
    assert len(script.hits) == 1


async def test_per_host_breakers_keep_one_dead_host_from_blocking_others(
        connectors: Connectors, script: Script, base: str) -> None:
    connector = connectors.get("web", max_attempts=1, per_host=True)
    for _ in range(3):
        with pytest.raises(ConnectorDown):
            await connector.request("GET", f"http://localhost:{closed_port()}/x")
    assert connector.breaker_for("http://localhost/").state == "open"
    response = await connector.request("GET", f"{base}/x")
    assert response.status_code == 200
    assert [row.key for row in connectors.board.snapshot()] == ["connector:web:localhost"]


async def test_query_strings_and_credentials_stay_out_of_messages(connectors: Connectors, script: Script,
                                                                  base: str, ledger: Ledger) -> None:
    script.then(status(500), status(500), status(500))
    url = base.replace("http://", "http://user:hunter2@") + "/hook?token=s3cr3t-value"
    with pytest.raises(ConnectorDown) as caught:
        await connectors.get("api").request("POST", url)
    texts = [str(caught.value)] + [f.message for f in failures(ledger)]
    assert all("s3cr3t" not in t and "hunter2" not in t for t in texts)
    assert f"POST {base}/hook: HTTP 500" in texts[-1]


async def test_non_http_scheme_is_refused_without_network(connectors: Connectors, ledger: Ledger) -> None:
    connector = connectors.get("api")
    with pytest.raises(ToolError) as caught:
        await connector.request("GET", "ftp://127.0.0.1/file")
    assert not isinstance(caught.value, ConnectorDown)
    assert connectors.calls_today() == {}
    assert failures(ledger) == [] and connector.breaker.failures == 0


async def test_stream_retries_until_headers_then_hands_over_the_body(
        connectors: Connectors, script: Script, base: str, sleeps: Sleeps) -> None:
    script.then(status(503, "2"), PlainTextResponse("streamed body"))
    async with connectors.get("api").stream("GET", f"{base}/big") as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body == b"streamed body"
    assert sleeps.waits == [2.0]


async def test_a_body_cut_short_becomes_connector_down(connectors: Connectors, script: Script, base: str,
                                                       ledger: Ledger) -> None:
    script.then(Response(b"only a little", headers={"Content-Length": "100000"}))
    connector = connectors.get("api")
    with pytest.raises(ConnectorDown) as caught:
        async with connector.stream("GET", f"{base}/cut") as response:
            await response.aread()
    assert "reading the body failed" in caught.value.reason
    assert [f.handling for f in failures(ledger)] == ["degraded"]
    assert connector.breaker.failures == 1


async def test_calls_today_restarts_at_local_midnight(ledger: Ledger, clock: ManualClock, script: Script,
                                                      base: str, sleeps: Sleeps) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock.set(dt.datetime(2026, 3, 1, 23, 59, tzinfo=berlin))
    made = Connectors(ledger, BreakerBoard(ledger), sleep=sleeps, tz=berlin)
    try:
        await made.get("api").request("GET", f"{base}/a")
        await made.get("api").request("GET", f"{base}/b")
        assert made.calls_today() == {"api": 2}
        clock.advance(minutes=2)
        assert made.calls_today() == {}
        await made.get("api").request("GET", f"{base}/c")
        assert made.calls_today() == {"api": 1}
    finally:
        await made.aclose()
    assert ledger.get_flag("calls:api:2026-03-01") == "2"
    assert ledger.get_flag("calls:api:2026-03-02") == "1"
