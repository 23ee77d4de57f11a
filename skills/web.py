"""Web pages: read a page's text, or check whether a site is up (status, latency, redirects, TLS expiry).

Both tools go through the `web` connector (retries, a breaker per host), follow at most five redirects by hand so
every hop is checked for an http/https scheme, and read at most MAX_BYTES of a body, so a huge or endless response
costs bounded memory and time.

The connector is guarded (aria.netguard): loopback, private, link-local, metadata and other non-public addresses
are refused, checked after DNS resolution on every connection, so on every redirect hop too, unless
ARIA_FETCH_ALLOW allows the host or network. A refusal is an AddressRefused tool error the model reads.
"""

from __future__ import annotations

import asyncio
import codecs
import datetime as dt
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

import httpx
from pydantic import BaseModel, Field

from aria.connectors import Connector, last_status, safe_url
from aria.errors import AddressRefused, ConnectorDown, ToolError
from aria.skills import ToolContext, tool

log = logging.getLogger(__name__)

KEYWORDS = (
    "url", "http", "https", "web", "website", "site", "page", "uptime", "up", "down", "status", "fetch", "link",
    "tls", "ssl", "certificate", "cert", "online", "reachable",
    # A domain in the request ("is example.com up?") splits into words like these.
    "www", "com", "org", "net", "io",
)

MAX_BYTES = 2_000_000
MAX_REDIRECTS = 5
FETCH_TIMEOUT = 30.0
CHECK_TIMEOUT = 20.0
# Stop retrying this long before the tool's own timeout, so the tool answers instead of being cancelled.
_MARGIN = 2.0
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/csv", "application/json"})
# Elements whose text is never readable content, dropped by the lxml fallback.
_NOT_TEXT = ("script", "style", "noscript", "template", "svg", "iframe", "head")


class FetchResult(BaseModel):
    """A fetched page's readable text."""

    url: str
    final_url: str
    status: int
    content_type: str
    title: str | None
    text: str
    truncated: bool


class UrlCheck(BaseModel):
    """Whether a URL answered, how fast, and when its TLS certificate expires."""

    url: str
    ok: bool
    status: int | None = None
    latency_ms: int | None = None
    final_url: str | None = None
    redirects: int = 0
    tls_expires_at: dt.datetime | None = None
    tls_days_left: int | None = None
    error: str | None = None


class RedirectRefused(ToolError):
    """A redirect chain was too long or led off http/https."""


@dataclass
class _Opened:
    """The final response after redirects, and what was seen on the way."""

    response: httpx.Response
    redirects: int
    tls_expires_at: dt.datetime | None


@tool(timeout=FETCH_TIMEOUT, risk="safe", keywords=("read", "fetch", "page", "text", "article"),
      raises=(ToolError, AddressRefused, ConnectorDown), reads="web", url_arg="url")
async def fetch_url(ctx: ToolContext, url: str,
                    max_chars: Annotated[int, Field(ge=200, le=20_000)] = 4000) -> FetchResult:
    """Fetch an http(s) URL and return its title and readable text (HTML reduced to the main text; plain text and
    JSON as-is), trimmed to max_chars. Loopback, private and cloud metadata addresses are refused."""
    _require_http(url)
    deadline = time.monotonic() + FETCH_TIMEOUT - _MARGIN
    async with _open(_connector(ctx), url, deadline, ctx) as opened:
        response = opened.response
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        kind = _kind(content_type)
        if kind is None:
            raise ToolError(f"refused: {content_type or 'a response without a content type'} is not text; "
                            "fetch_url reads HTML, plain text and JSON")
        body, cut = await _read_limited(response, deadline)
    if kind == "html":
        title, text = await asyncio.to_thread(_readable, body, str(response.url))
    else:
        title, text = None, _decode(body, response.charset_encoding).strip()
    return FetchResult(
        url=url, final_url=str(response.url), status=response.status_code, content_type=content_type,
        title=title, text=text[:max_chars], truncated=cut or len(text) > max_chars,
    )


@tool(timeout=CHECK_TIMEOUT, risk="safe", keywords=("check", "uptime", "down", "up", "status", "tls", "certificate"),
      raises=(ToolError, AddressRefused, ConnectorDown), reads="web", url_arg="url")
async def check_url(ctx: ToolContext, url: str) -> UrlCheck:
    """Check whether an http(s) URL is up: status, latency, redirects and, for https, TLS certificate expiry.
    An unreachable site is reported as ok=false with the reason; loopback, private and cloud metadata addresses
    are refused."""
    _require_http(url)
    deadline = time.monotonic() + CHECK_TIMEOUT - _MARGIN
    started = time.monotonic()
    try:
        async with _open(_connector(ctx), url, deadline, ctx) as opened:
            latency_ms = round((time.monotonic() - started) * 1000)
            response = opened.response
    except (ConnectorDown, RedirectRefused) as exc:
        reason = exc.reason if isinstance(exc, ConnectorDown) else str(exc)
        return UrlCheck(url=url, ok=False, status=last_status(exc), error=reason)
    expires = opened.tls_expires_at
    days_left = None
    if expires is not None:
        days_left = (expires - ctx.clock.now().astimezone(dt.UTC)).days
    ok = response.status_code < 400
    return UrlCheck(
        url=url, ok=ok, status=response.status_code, latency_ms=latency_ms, final_url=str(response.url),
        redirects=opened.redirects, tls_expires_at=expires, tls_days_left=days_left,
        error=None if ok else f"HTTP {response.status_code} {response.reason_phrase}".rstrip(),
    )


# helpers ------------------------------------------------------------------------------------------------------


def _connector(ctx: ToolContext) -> Connector:
    if ctx.connectors is None:
        raise ToolError("web access is not available: no HTTP connectors were configured")
    # A breaker per host: one dead site must not block every other site.
    connector = ctx.connectors.get("web", per_host=True, guard=ctx.settings.fetch_allowed)
    if connector.guard is None:  # someone made a "web" connector first, without the guard: never go unguarded
        raise ToolError("web access is not available: the web connector has no address guard")
    return connector


def _require_http(url: str | httpx.URL) -> None:
    """Refuse anything but an absolute http/https URL, before any network access."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ToolError(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        scheme = f"{parsed.scheme}: URLs" if parsed.scheme else "URLs without a scheme"
        raise ToolError(f"refused: only http:// and https:// URLs can be fetched, not {scheme}")
    if not parsed.host:
        raise ToolError("not a valid URL: it names no host")


@asynccontextmanager
async def _open(connector: Connector, url: str, deadline: float, ctx: ToolContext) -> AsyncIterator[_Opened]:
    """GET `url`, following up to MAX_REDIRECTS redirects, each checked before it is requested: by the address
    guard on connecting, and, after the run read untrusted content, against the hosts the owner named."""
    run_id = ctx.run_id
    current = httpx.URL(url)
    expires: dt.datetime | None = None
    for hop in range(MAX_REDIRECTS + 1):
        async with connector.stream("GET", str(current), deadline=deadline, run_id=run_id) as response:
            expires = _tls_expiry(response) or expires
            location = response.headers.get("location")
            if not (response.is_redirect and location):
                yield _Opened(response, hop, expires)
                return
        current = current.join(location)
        try:
            _require_http(current)
        except ToolError as exc:
            raise RedirectRefused(f"redirect refused: {exc}") from None
        unnamed = ctx.egress(str(current)) if ctx.egress is not None else None
        if unnamed is not None:
            raise RedirectRefused(f"redirect refused: it leads to {unnamed}, a host the owner did not name, after "
                                  "reading untrusted content; ask the owner to name it if it is wanted")
    raise RedirectRefused(f"too many redirects: more than {MAX_REDIRECTS} starting at {safe_url(url)}")


def _tls_expiry(response: httpx.Response) -> dt.datetime | None:
    """When the verified server certificate of this connection expires (None for plain http)."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    not_after = (ssl_object.getpeercert() or {}).get("notAfter")
    if not isinstance(not_after, str):
        return None
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)


def _kind(content_type: str) -> Literal["html", "text"] | None:
    if content_type in _HTML_TYPES:
        return "html"
    if content_type in _TEXT_TYPES or content_type.endswith("+json"):
        return "text"
    return None


async def _read_limited(response: httpx.Response, deadline: float) -> tuple[bytes, bool]:
    """At most MAX_BYTES of the body, stopping early at the deadline; True when the body was cut."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BYTES or time.monotonic() >= deadline:
            return b"".join(chunks)[:MAX_BYTES], True
    return b"".join(chunks), False


def _decode(body: bytes, charset: str | None) -> str:
    """Body bytes as text in the declared charset; an unknown charset name falls back to UTF-8."""
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = None
    return body.decode(charset or "utf-8", errors="replace")


def _readable(html: bytes, url: str) -> tuple[str | None, str]:
    """Title and main text of an HTML document (CPU-bound: run it in a thread)."""
    try:
        import trafilatura
    except ImportError as exc:
        # Seen in the wild when lxml's html-clean extra is missing; the page is still readable without it.
        log.warning("trafilatura cannot be imported (%s); reading HTML with lxml instead", exc)
        return _lxml_text(html)
    document = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=False,
                                           include_images=False)
    assert not isinstance(document, dict)  # a dict only when as_dict=True is passed
    if document is not None and document.text:
        return document.title, document.text
    # No main content found (a very short page, an app shell): take every visible text instead.
    title = document.title if document is not None else None
    return title, trafilatura.html2txt(html)


def _lxml_text(html: bytes) -> tuple[str | None, str]:
    """The fallback reader: lxml's HTML parser, minus scripts, styles and other non-text elements."""
    import lxml.etree
    import lxml.html

    try:
        tree = lxml.html.document_fromstring(html)
    except (lxml.etree.ParserError, ValueError):
        return None, ""
    title = (tree.findtext(".//title") or "").strip() or None
    for element in list(tree.iter(*_NOT_TEXT)):  # collected first: dropping while iterating skips nodes
        element.drop_tree()
    lines = (" ".join(line.split()) for line in tree.text_content().splitlines())
    return title, "\n".join(line for line in lines if line)
