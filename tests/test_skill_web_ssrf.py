"""SSRF: fetch_url and check_url refuse loopback, private, link-local and metadata targets, however they are written.

A real server on 127.0.0.1 plays the target; each refusal is checked to have reached nothing (the server saw no
request). Names other than `localhost` resolve through a resolver injected into the connectors, so no test needs DNS
or a network beyond 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from aria.agent.state import Request as RunRequest
from aria.clock import ManualClock
from aria.connectors import Connectors
from aria.errors import AddressRefused
from aria.ledger import Failure
from aria.skills import ToolContext, ToolSpec, load_skill_file
from tests.conftest import START
from tests.fakes.server import ServerThread
from tests.test_skill_web import PAGE, SKILL_FILE, Sleeps, build_ctx, call

SEEN: list[str] = []


def _seen(response: Response) -> Any:
    async def endpoint(request: Request) -> Response:
        SEEN.append(request.url.path)
        return response

    return endpoint


async def to_loopback(request: Request) -> Response:
    SEEN.append(request.url.path)
    return RedirectResponse(f"http://127.0.0.1:{request.url.port}/secret", status_code=302)


async def to_name(request: Request) -> Response:
    SEEN.append(request.url.path)
    return RedirectResponse(f"http://evil.test:{request.url.port}/secret", status_code=302)


def make_app() -> Starlette:
    return Starlette(routes=[
        Route("/page", _seen(HTMLResponse(PAGE))),
        Route("/secret", _seen(PlainTextResponse("root password: hunter2"))),
        Route("/to-loopback", to_loopback),
        Route("/to-name", to_name),
    ])


class Names:
    """A resolver with a fixed table, recording every look-up."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        if host not in self.table:
            raise OSError(f"unknown test name {host}")
        return self.table[host]


NAMES = {
    "intranet.test": ["127.0.0.1"],
    "wiki.corp.test": ["127.0.0.1"],
    "evil.test": ["127.0.0.1"],
    "mixed.test": ["93.184.216.34", "127.0.0.1"],  # one public address does not excuse a loopback one
}


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with ServerThread(make_app(), name="ssrf-target") as server:
        yield int(server.url.rsplit(":", 1)[1])


@pytest.fixture(autouse=True)
def clear_seen() -> None:
    SEEN.clear()


@pytest.fixture(scope="module")
def tools() -> dict[str, ToolSpec]:
    return {t.name: t for t in load_skill_file(SKILL_FILE, "ssrf_skills").tools}


@pytest.fixture
def names() -> Names:
    return Names(NAMES)


@pytest.fixture
async def make_ctx(tmp_path: Path, names: Names) -> AsyncIterator[Any]:
    made: list[Connectors] = []

    def make(*allow: str) -> ToolContext:
        ctx, connectors = build_ctx(tmp_path, ManualClock(START), Sleeps(), allow=allow, resolver=names)
        made.append(connectors)
        return ctx

    yield make
    for connectors in made:
        await connectors.aclose()


# refused without any network access -----------------------------------------------------------------------------

LITERALS = [
    ("http://127.0.0.1:{port}/secret", "loopback"),
    ("http://[::1]:{port}/secret", "loopback"),
    ("http://2130706433:{port}/secret", "loopback"),  # decimal
    ("http://0x7f.1:{port}/secret", "loopback"),  # hex, short
    ("http://127.1:{port}/secret", "loopback"),  # short
    ("http://0:{port}/secret", "unspecified"),
    ("http://0.0.0.0:{port}/secret", "unspecified"),
    ("http://[::]:{port}/secret", "unspecified"),
    ("http://[::ffff:127.0.0.1]:{port}/secret", "loopback address inside an IPv6"),
    ("http://[::ffff:7f00:1]:{port}/secret", "loopback address inside an IPv6"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("https://192.168.1.1/admin", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://[fc00::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://169.254.1.1/", "link-local"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "cloud metadata address"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata address"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "cloud metadata address inside an IPv6"),
    ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "cloud metadata address inside an IPv6"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata name"),
    ("http://METADATA.google.internal./computeMetadata/v1/", "cloud metadata name"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
]


@pytest.mark.parametrize("tool", ["fetch_url", "check_url"])
@pytest.mark.parametrize(("url", "reason"), LITERALS)
async def test_refused_address_literals_and_metadata_names_never_touch_the_network(
        tools: dict[str, ToolSpec], make_ctx: Any, names: Names, port: int, tool: str, url: str,
        reason: str) -> None:
    ctx = make_ctx()
    with pytest.raises(AddressRefused, match=reason) as refused:
        await call(tools, ctx, tool, url=url.format(port=port))
    assert "ARIA_FETCH_ALLOW" in str(refused.value)
    assert SEEN == [] and names.lookups == []
    assert ctx.connectors.calls_today() == {}  # refused before the breaker or a connection was asked


# refused after DNS resolution -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["fetch_url", "check_url"])
async def test_localhost_resolved_by_the_system_is_refused(
        tools: dict[str, ToolSpec], tmp_path: Path, port: int, tool: str) -> None:
    ctx, connectors = build_ctx(tmp_path, ManualClock(START), Sleeps(), allow=())  # the real system resolver
    try:
        with pytest.raises(AddressRefused, match=r"localhost resolves to .*, which is a loopback address"):
            await call(tools, ctx, tool, url=f"http://localhost:{port}/secret")
    finally:
        await connectors.aclose()
    assert SEEN == []


async def test_a_name_with_one_loopback_address_among_public_ones_is_refused(
        tools: dict[str, ToolSpec], make_ctx: Any, names: Names, port: int) -> None:
    with pytest.raises(AddressRefused, match=r"mixed\.test resolves to 127\.0\.0\.1, which is a loopback address"):
        await call(tools, make_ctx(), "fetch_url", url=f"http://mixed.test:{port}/secret")
    assert SEEN == [] and names.lookups == [("mixed.test", port)]


@pytest.mark.parametrize("tool", ["fetch_url", "check_url"])
async def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(
        tools: dict[str, ToolSpec], make_ctx: Any, port: int, tool: str) -> None:
    ctx = make_ctx("intranet.test")  # the name is allowed; the loopback address it redirects to is not
    with pytest.raises(AddressRefused, match=rf"refused http://127.0.0.1:{port}/secret: .*loopback"):
        await call(tools, ctx, tool, url=f"http://intranet.test:{port}/to-loopback")
    assert SEEN == ["/to-loopback"]


async def test_a_redirect_to_a_name_that_resolves_to_loopback_is_refused(
        tools: dict[str, ToolSpec], make_ctx: Any, names: Names, port: int) -> None:
    with pytest.raises(AddressRefused, match=r"evil\.test resolves to 127\.0\.0\.1"):
        await call(tools, make_ctx("intranet.test"), "fetch_url", url=f"http://intranet.test:{port}/to-name")
    assert SEEN == ["/to-name"]
    assert names.lookups == [("intranet.test", port), ("evil.test", port)]


# allowed ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("allow", "host"), [
    ("intranet.test", "intranet.test"),  # a host name
    ("*.corp.test", "wiki.corp.test"),  # a suffix pattern
    ("127.0.0.0/8", "intranet.test"),  # a network holding every address the name resolves to
])
async def test_allowed_hosts_patterns_and_networks_are_fetched_from_the_checked_address(
        tools: dict[str, ToolSpec], make_ctx: Any, names: Names, port: int, allow: str, host: str) -> None:
    result = await call(tools, make_ctx(allow), "fetch_url", url=f"http://{host}:{port}/page")
    assert result.title == "Aria status" and result.final_url == f"http://{host}:{port}/page"
    assert SEEN == ["/page"]
    # Resolved once, by the guard: the `.test` names exist nowhere else, so the connection went to that address.
    assert names.lookups == [(host, port)]


async def test_an_allowed_loopback_network_does_not_allow_other_private_addresses(
        tools: dict[str, ToolSpec], make_ctx: Any) -> None:
    with pytest.raises(AddressRefused, match="private"):
        await call(tools, make_ctx("127.0.0.0/8"), "check_url", url="http://10.0.0.1/")


# through the agent loop ------------------------------------------------------------------------------------------


async def test_a_refusal_reaches_the_model_as_a_tool_error_and_is_recorded(make_aria: Any, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("fetch_url", {"url": "http://169.254.169.254/latest/meta-data/"})
    fake_openai.enqueue_text("That address is off limits.")
    aria = make_aria()
    outcome = await aria.agent.run(RunRequest("fetch the page http://169.254.169.254/latest/meta-data/"))
    assert outcome.text == "That address is off limits."
    told = [m["content"] for m in fake_openai.completions[1].body["messages"] if m["role"] == "tool"]
    assert len(told) == 1 and "ERROR (AddressRefused)" in told[0] and "cloud metadata address" in told[0]
    (step,) = [s for s in aria.ledger.steps(outcome.run_id) if s.name == "fetch_url"]
    assert step.status == "error" and step.error_type == "AddressRefused"
    with aria.ledger.read() as session:
        failures = list(session.exec(select(Failure).where(Failure.run_id == outcome.run_id)))
    assert [(f.component, f.error_type) for f in failures] == [("tool:fetch_url", "AddressRefused")]
