"""The web skill, called through its ToolSpec against real servers on 127.0.0.1 (plain HTTP and self-signed TLS).

Loopback is refused by default, so these tests allow 127.0.0.1 explicitly (ARIA_FETCH_ALLOW), which also proves
the allow setting works; tests/test_skill_web_ssrf.py checks what is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from aria.breaker import BreakerBoard
from aria.clock import ManualClock
from aria.config import Settings
from aria.connectors import Connectors
from aria.errors import ToolError, ToolInputError
from aria.ledger import Ledger
from aria.netguard import Resolver, system_resolver
from aria.skills import ToolContext, ToolSpec, load_skill_file
from tests.conftest import START
from tests.fakes.server import ServerThread

SKILL_FILE = Path(__file__).resolve().parents[1] / "skills" / "web.py"

PAGE = """<!doctype html>
<html><head><title>Aria status</title>
<style>body { color: red; }</style>
<script>var tracker = "SCRIPT-TEXT";</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<article><h1>Aria status</h1>
<p>All systems are operating normally. The API answered every health check in the last hour.</p>
<p>Median latency across the three regions stayed at forty-two milliseconds today.</p></article>
<script>document.write("MORE-SCRIPT")</script></body></html>"""


async def endless(_: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        block = b"all work and no play " * 3000
        while True:
            yield block
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


async def hop(request: Request) -> Response:
    left = int(request.path_params["n"])
    return RedirectResponse("/page" if left <= 1 else f"/hop/{left - 1}", status_code=302)


HITS: list[str] = []


async def record(request: Request, call_next: Any) -> Response:
    HITS.append(request.url.path)
    return await call_next(request)


def make_app() -> Starlette:
    routes = [
        Route("/page", lambda _: HTMLResponse(PAGE)),
        Route("/plain", lambda _: PlainTextResponse("line one\nline two")),
        Route("/latin", lambda _: Response("café crème".encode("latin-1"), media_type="text/plain; charset=latin-1")),
        Route("/data.json", lambda _: JSONResponse({"status": "green", "checks": [1, 2]})),
        Route("/logo.png", lambda _: Response(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, media_type="image/png")),
        Route("/huge", endless),
        Route("/ok", lambda _: PlainTextResponse("fine")),
        Route("/down", lambda _: PlainTextResponse("maintenance", status_code=503)),
        Route("/gone", lambda _: PlainTextResponse("no such page", status_code=404)),
        Route("/loop", lambda _: RedirectResponse("/loop", status_code=302)),
        Route("/to-ftp", lambda _: RedirectResponse("ftp://127.0.0.1/file", status_code=302)),
        Route("/hop/{n}", hop),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=record)])


class Sleeps:
    """Stands in for asyncio.sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with ServerThread(make_app(), name="web-skill-test") as server:
        yield server.url


@pytest.fixture(autouse=True)
def clear_hits() -> None:
    HITS.clear()


@pytest.fixture(scope="module")
def tools() -> dict[str, ToolSpec]:
    skill = load_skill_file(SKILL_FILE, "test_skills")
    return {t.name: t for t in skill.tools}


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def build_ctx(tmp_path: Path, clock: ManualClock, sleeps: Sleeps, verify: ssl.SSLContext | bool = True,
              allow: tuple[str, ...] = ("127.0.0.1",),
              resolver: Resolver = system_resolver) -> tuple[ToolContext, Connectors]:
    ledger = Ledger.open(tmp_path / "aria.db", clock=clock)
    connectors = Connectors(ledger, BreakerBoard(ledger), sleep=sleeps, verify=verify, resolver=resolver)
    settings = Settings(_env_file=None, fetch_allow=list(allow))  # type: ignore[call-arg]
    return ToolContext(settings=settings, ledger=ledger, clock=clock, connectors=connectors), connectors


@pytest.fixture
async def ctx(tmp_path: Path, sleeps: Sleeps) -> AsyncIterator[ToolContext]:
    made, connectors = build_ctx(tmp_path, ManualClock(START), sleeps)
    yield made
    await connectors.aclose()


async def call(tools: dict[str, ToolSpec], ctx: ToolContext, name: str, **arguments: Any) -> Any:
    spec = tools[name]
    return await spec.call(ctx, spec.validate(arguments))


# fetch_url ----------------------------------------------------------------------------------------------------


async def test_fetch_html_returns_title_and_readable_text(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                          base: str) -> None:
    result = await call(tools, ctx, "fetch_url", url=f"{base}/page")
    assert (result.status, result.content_type, result.title) == (200, "text/html", "Aria status")
    assert "operating normally" in result.text and "forty-two milliseconds" in result.text
    assert not any(noise in result.text for noise in ("SCRIPT-TEXT", "MORE-SCRIPT", "color: red"))
    assert result.truncated is False


async def test_fetch_html_without_trafilatura_uses_the_lxml_reader(
        tools: dict[str, ToolSpec], ctx: ToolContext, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # makes `import trafilatura` raise ImportError
    result = await call(tools, ctx, "fetch_url", url=f"{base}/page")
    assert result.title == "Aria status"
    assert "operating normally" in result.text
    assert not any(noise in result.text for noise in ("SCRIPT-TEXT", "MORE-SCRIPT", "color: red"))


async def test_fetch_plain_text_and_json_come_back_as_is(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                         base: str) -> None:
    plain = await call(tools, ctx, "fetch_url", url=f"{base}/plain")
    assert (plain.text, plain.title, plain.content_type) == ("line one\nline two", None, "text/plain")
    latin = await call(tools, ctx, "fetch_url", url=f"{base}/latin")
    assert latin.text == "café crème"
    data = await call(tools, ctx, "fetch_url", url=f"{base}/data.json")
    assert json.loads(data.text) == {"status": "green", "checks": [1, 2]}


async def test_fetch_refuses_binary_content_and_names_the_type(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                               base: str) -> None:
    with pytest.raises(ToolError, match="image/png"):
        await call(tools, ctx, "fetch_url", url=f"{base}/logo.png")


async def test_fetch_of_an_endless_body_stops_at_the_size_limit(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                                base: str) -> None:
    started = time.monotonic()
    result = await call(tools, ctx, "fetch_url", url=f"{base}/huge", max_chars=1000)
    assert result.truncated is True
    assert len(result.text) == 1000
    assert time.monotonic() - started < 5


async def test_fetch_follows_a_few_redirects(tools: dict[str, ToolSpec], ctx: ToolContext, base: str) -> None:
    result = await call(tools, ctx, "fetch_url", url=f"{base}/hop/3")
    assert result.final_url == f"{base}/page"
    assert result.title == "Aria status"


async def test_fetch_stops_a_redirect_loop(tools: dict[str, ToolSpec], ctx: ToolContext, base: str) -> None:
    with pytest.raises(ToolError, match="too many redirects"):
        await call(tools, ctx, "fetch_url", url=f"{base}/loop")
    assert HITS == ["/loop"] * 6  # the first request and five redirects, then it stops


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "file:///etc/passwd", "javascript:alert(1)", "example.com"])
async def test_fetch_refuses_non_http_urls_without_network(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                           url: str) -> None:
    with pytest.raises(ToolError, match="only http:// and https://"):
        await call(tools, ctx, "fetch_url", url=url)
    assert ctx.connectors is not None and ctx.connectors.calls_today() == {}


async def test_fetch_refuses_a_redirect_to_another_scheme(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                          base: str) -> None:
    with pytest.raises(ToolError, match="redirect refused"):
        await call(tools, ctx, "fetch_url", url=f"{base}/to-ftp")


def test_fetch_arguments_are_validated(tools: dict[str, ToolSpec]) -> None:
    with pytest.raises(ToolInputError, match="max_chars"):
        tools["fetch_url"].validate({"url": "https://example.org", "max_chars": 10})
    with pytest.raises(ToolInputError, match="verify"):
        tools["check_url"].validate({"url": "https://example.org", "verify": False})


def test_both_tools_are_safe_and_found_by_uptime_words(tools: dict[str, ToolSpec]) -> None:
    skill = load_skill_file(SKILL_FILE, "test_skills_select")
    assert all(spec.risk == "safe" for spec in skill.tools)
    assert {"uptime", "tls", "certificate", "website"} <= skill.keywords
    assert {"uptime", "down", "tls"} <= tools["check_url"].keywords


# check_url ----------------------------------------------------------------------------------------------------


async def test_check_a_healthy_url(tools: dict[str, ToolSpec], ctx: ToolContext, base: str) -> None:
    result = await call(tools, ctx, "check_url", url=f"{base}/hop/2")
    assert (result.ok, result.status, result.redirects, result.error) == (True, 200, 2, None)
    assert result.final_url == f"{base}/page"
    assert result.latency_ms is not None and result.latency_ms >= 0
    assert result.tls_expires_at is None and result.tls_days_left is None


async def test_check_a_503_is_an_answer_not_an_exception(tools: dict[str, ToolSpec], ctx: ToolContext, base: str,
                                                         sleeps: Sleeps) -> None:
    result = await call(tools, ctx, "check_url", url=f"{base}/down")
    assert (result.ok, result.status) == (False, 503)
    assert "HTTP 503" in (result.error or "")
    assert HITS == ["/down"] * 3 and len(sleeps.waits) == 2


async def test_check_a_404_reports_not_ok(tools: dict[str, ToolSpec], ctx: ToolContext, base: str) -> None:
    result = await call(tools, ctx, "check_url", url=f"{base}/gone")
    assert (result.ok, result.status, result.error) == (False, 404, "HTTP 404 Not Found")


async def test_check_a_refused_port_then_an_open_circuit(tools: dict[str, ToolSpec], ctx: ToolContext) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    for _ in range(3):  # each check is one breaker failure after its retries
        result = await call(tools, ctx, "check_url", url=url)
        assert (result.ok, result.status) == (False, None)
        assert "ConnectError" in (result.error or "")
    result = await call(tools, ctx, "check_url", url=url)
    assert result.ok is False and "circuit open" in (result.error or "")


async def test_check_a_redirect_loop_reports_not_ok(tools: dict[str, ToolSpec], ctx: ToolContext,
                                                    base: str) -> None:
    result = await call(tools, ctx, "check_url", url=f"{base}/loop")
    assert result.ok is False and "too many redirects" in (result.error or "")


# TLS ----------------------------------------------------------------------------------------------------------


class TlsServer:
    """uvicorn with a certificate, in a thread, on a free loopback port."""

    def __init__(self, app: Starlette, certfile: Path, keyfile: Path) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), lifespan="off",
                                log_config=None, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> TlsServer:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("TLS test server did not start")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_base(certificate: tuple[Path, Path]) -> Iterator[str]:
    with TlsServer(make_app(), *certificate) as server:
        yield server.url


async def test_check_reports_tls_expiry(tools: dict[str, ToolSpec], tmp_path: Path, certificate: tuple[Path, Path],
                                        tls_base: str, sleeps: Sleeps) -> None:
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    now = dt.datetime.now(dt.UTC)
    ctx, connectors = build_ctx(tmp_path, ManualClock(now), sleeps, verify=trust)
    try:
        result = await call(tools, ctx, "check_url", url=f"{tls_base}/ok")
    finally:
        await connectors.aclose()
    assert (result.ok, result.status) == (True, 200)
    assert result.tls_expires_at is not None
    assert abs(result.tls_expires_at - (now + dt.timedelta(days=30))) < dt.timedelta(minutes=5)
    assert result.tls_days_left in (29, 30)


async def test_check_an_untrusted_certificate_is_not_ok_and_not_retried(
        tools: dict[str, ToolSpec], ctx: ToolContext, tls_base: str, sleeps: Sleeps) -> None:
    result = await call(tools, ctx, "check_url", url=f"{tls_base}/ok")
    assert result.ok is False
    assert "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
    assert sleeps.waits == []
