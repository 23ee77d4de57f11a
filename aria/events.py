"""Events from the owner's systems: authenticated, recorded, then turned into runs in the source's own time order.

Each source has a secret (``ARIA_EVENT_SECRETS=source=secret,...``) and a mode (``ARIA_EVENT_AUTH=source=mode,...``;
``hmac`` by default, ``github`` for the source named github), implemented in aria.event_auth::

    hmac    X-Aria-Signature: sha256=<hex HMAC-SHA256(secret, material)>
            X-Aria-Timestamp: <unix seconds>        optional, recommended
                material = f"{timestamp}.".encode() + raw_body  with X-Aria-Timestamp; raw_body without it
            Protects authenticity and integrity, even without TLS. Replays: a timestamp more than
            ``ARIA_EVENT_MAX_AGE_SECONDS`` old (or a minute ahead) is refused, and within the window the same signed
            material (hash of timestamp and body) runs once; without a timestamp the same body runs once, ever.
    github  X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw_body)>   (GitHub's own scheme)
            Authenticity and integrity; GitHub signs no timestamp, so the same body runs once, ever.
    bearer  Authorization: Bearer <secret>          (Prometheus Alertmanager's http_config.authorization)
    basic   Authorization: Basic base64(user:secret), any user   (Grafana's webhook contact point)
            Only authenticity, and only over TLS: the secret travels with every request, the sender signs neither
            body nor time, so whoever sees one request can replay or alter it. The same body within
            ``ARIA_EVENT_MAX_AGE_SECONDS`` runs once (Alertmanager retries; its repeat_interval reminders still run).

Signatures, tokens and passwords are compared in constant time; the signature covers the raw bytes as received,
before parsing. A body sent as ``application/x-www-form-urlencoded`` (GitHub's other content type) carries its JSON
in the ``payload`` field. ``X-Aria-Delivery: <id>`` (or ``X-GitHub-Delivery``) is not signed, so it may only add
de-duplication: an id seen before is a ``duplicate``, but a new id never makes the same authenticated content new.

Checks in order, each refusal leaving one ``event`` row (status ``refused``, a reason, no payload) and running nothing:
a secret for the source (else 404); at most ``ARIA_EVENT_MAX_BYTES``, counted while reading (413); the signature or
credentials (401); a signed timestamp within the window, any out-of-range value included (401); UTF-8 JSON (400).
A duplicate (same authenticated content, or a delivery id seen before) is answered 200 and does not run.

Accepted events (202) keep their payload and their own time (alertmanager ``startsAt``/``endsAt``, github
``updated_at``/``created_at``, else a time field of the payload or X-Aria-Timestamp). One worker per source holds each
arrival ``settle_seconds``, then takes the oldest waiting event first, so close arrivals run in event-time order; one
arriving after a newer one was handled says so in its run. The source's rule (built in: ``alertmanager``, ``github``;
else generic; ``ARIA_EVENT_RULES_FILE`` overrides ``prompt``/``notify`` per ``[sources.<name>]``) makes the request.
Events with nothing to report (GitHub successes, pings) are marked processed without a run: no model call.
A run's outcome reaches the owner through the run service, written with the run (it cannot be lost).
Events accepted but not processed when the process stopped are queued again by ``start()``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import heapq
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlmodel import col, select

from aria.agent.state import Request
from aria.event_auth import Proof, Refusal, verify
from aria.event_rules import Rule, digest, load_rules, render, rule_for
from aria.ledger import Event, as_utc

if TYPE_CHECKING:
    from aria.app import Aria
    from aria.channel import Channel

log = logging.getLogger(__name__)

Verdict = Literal["accepted", "duplicate", "refused"]

DELIVERY_HEADER = "x-aria-delivery"
GITHUB_DELIVERY_HEADER = "x-github-delivery"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_EVENT_AHEAD = dt.timedelta(days=1)  # an event time further ahead than this is not believed


class BodyTooLarge(ValueError):
    """The request body is over the limit; reading stopped there."""


class NoPayload(ValueError):
    """A form-encoded body without exactly one `payload` field."""


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes: by Content-Length up front, else while reading."""
    declared = headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(declared)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(str(len(body)))
    return bytes(body)


def _json_text(headers: Mapping[str, str], body: bytes) -> str:
    """The JSON text of a body: the body itself, or the `payload` field of a form-encoded one (GitHub's form type)."""
    text = body.decode("utf-8")
    if headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        return text
    fields = urllib.parse.parse_qs(text, keep_blank_values=True, strict_parsing=True, errors="strict",
                                   max_num_fields=16)
    payload = fields.get("payload", [])
    if len(payload) != 1:
        raise NoPayload("form body has no single payload field")
    return payload[0]


@dataclass(frozen=True)
class Receipt:
    """What the caller of /events/<source> is told."""

    status_code: int
    verdict: Verdict
    reason: str | None = None
    event_id: int | None = None


@dataclass(order=True)
class _Queued:
    """An accepted event waiting for its source's worker; ordered by event time, then arrival."""

    key: dt.datetime
    event_id: int
    source: str = field(compare=False)
    payload: str = field(compare=False)
    event_at: dt.datetime | None = field(compare=False)
    ready_at: float = field(compare=False)


class EventIngress:
    """Verifies, records and queues events; one background worker per source turns them into runs."""

    def __init__(self, aria: Aria, channel: Channel, *, settle_seconds: float = 1.0,
                 rules: Mapping[str, Rule] | None = None) -> None:
        self._aria = aria
        self._ledger = aria.ledger
        self._settings = aria.settings
        self._channel = channel
        self._settle = settle_seconds
        self.rules = dict(rules) if rules is not None else load_rules(aria.settings.event_rules_file)
        self._pending: dict[str, list[_Queued]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._newest: dict[str, dt.datetime] = {}

    async def receive(self, source: str, headers: Mapping[str, str], chunks: AsyncIterator[bytes]) -> Receipt:
        """Check one delivery and record it; an accepted event is queued and answered at once (202).

        `headers` is case-insensitive (Starlette's Headers) or has lower-case keys; `chunks` is the raw body.
        """
        secret = self._settings.event_secrets.get(source)
        if secret is None:
            return self._reject(source[:64], 404, "refused", "unknown source")
        limit = self._settings.event_max_bytes
        try:
            body = await read_body(headers, chunks, limit)
        except BodyTooLarge:
            return self._reject(source, 413, "refused", f"body over {limit} bytes")
        sha = hashlib.sha256(body).hexdigest()
        mode = self._settings.event_auth_for(source)
        proof = verify(mode, secret.get_secret_value().encode(), headers, body,
                       now=self._ledger.now().timestamp(), max_age=self._settings.event_max_age_seconds)
        if isinstance(proof, Refusal):
            return self._reject(source, 401, "refused", proof.reason, sha)
        try:
            text = _json_text(headers, body)
            payload = json.loads(text)
        except ValueError as exc:  # UnicodeDecodeError is one
            return self._reject(source, 400, "refused", str(exc) if isinstance(exc, NoPayload) else
                                "body is not UTF-8 JSON", sha, verified=True)
        except RecursionError:
            return self._reject(source, 400, "refused", "body is nested too deeply", sha, verified=True)
        delivery = headers.get(DELIVERY_HEADER) or (headers.get(GITHUB_DELIVERY_HEADER) if mode == "github" else None)
        return self._accept(source, delivery, text, payload, sha, proof)

    def _accept(self, source: str, delivery: str | None, text: str, payload: Any, sha: str, proof: Proof) -> Receipt:
        received = self._ledger.now()
        stamp = proof.stamp
        event_at = digest(source, payload).at or (dt.datetime.fromtimestamp(stamp, dt.UTC) if stamp else None)
        if event_at is not None and event_at > received + MAX_EVENT_AHEAD:
            event_at = None  # an absurd time (year 9999) would order every later event behind it
        # The delivery id is not authenticated: it may only add de-duplication (a sender's retry under the same id),
        # never let the same authenticated content run twice.
        outcome = self._ledger.record_accepted_event(
            source, replay_key=proof.replay_key, replay_since=received - proof.window if proof.window else None,
            delivery_id=delivery[:200] if delivery else None, body_sha256=sha, payload=text, event_at=event_at)
        if outcome == "replayed":
            window = f" in the last {proof.window.total_seconds():.0f} s" if proof.window else ""
            return self._reject(source, 200, "duplicate", f"same content as an event accepted{window}", sha,
                                verified=True)
        if outcome == "redelivered":
            return self._reject(source, 200, "duplicate", "delivery id already received", sha, verified=True)
        self._enqueue(self._queued(outcome, source, self._ledger.redact(text) or "", event_at, received))
        return Receipt(202, "accepted", event_id=outcome)

    def _reject(self, source: str, status_code: int, verdict: Verdict, reason: str, sha: str | None = None, *,
                verified: bool = False) -> Receipt:
        # No delivery id on these rows: a forged request must not claim the id of a genuine one.
        event_id = self._ledger.record_event(source, status=verdict, verified=verified, reason=reason,
                                             body_sha256=sha)
        log.info("%s event for %r: %s", verdict, source, reason)
        return Receipt(status_code, verdict, reason, event_id)

    # processing -------------------------------------------------------------------------------------------

    async def start(self) -> int:
        """Queue events accepted earlier but never processed (the process stopped first); returns how many."""
        with self._ledger.read() as session:
            rows = session.exec(select(Event).where(Event.status == "accepted", col(Event.processed_at).is_(None),
                                                    col(Event.payload).is_not(None))).all()
        for row in rows:
            assert row.id is not None
            event_at = as_utc(row.event_at) if row.event_at else None
            self._enqueue(self._queued(row.id, row.source, row.payload or "", event_at, as_utc(row.received_at)))
        return len(rows)

    async def stop(self) -> None:
        """Cancel the workers; what they had not finished stays unprocessed and runs after the next start."""
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every queued event has been processed."""
        while self._workers:
            await asyncio.gather(*list(self._workers.values()))

    def _queued(self, event_id: int, source: str, payload: str, event_at: dt.datetime | None,
                received_at: dt.datetime) -> _Queued:
        return _Queued(event_at or received_at, event_id, source, payload, event_at, time.monotonic() + self._settle)

    def _enqueue(self, item: _Queued) -> None:
        heapq.heappush(self._pending.setdefault(item.source, []), item)
        if item.source not in self._workers:
            self._workers[item.source] = asyncio.create_task(self._work(item.source), name=f"events:{item.source}")

    async def _work(self, source: str) -> None:
        queue = self._pending[source]
        try:
            while queue:
                wait = queue[0].ready_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # an older event may still arrive and go first
                    continue
                item = heapq.heappop(queue)
                try:
                    await self._process(item)
                except Exception:  # the event stays unprocessed in the ledger and is retried at the next start
                    log.exception("event %s from %s could not be processed", item.event_id, source)
        finally:
            if self._workers.get(source) is asyncio.current_task():
                del self._workers[source]

    async def _process(self, item: _Queued) -> None:
        try:
            payload: Any = json.loads(item.payload)
        except ValueError:  # only if redaction broke the JSON: the text is still worth reporting
            payload = item.payload
        found = digest(item.source, payload)
        if not found.relevant:
            self._finish(item.event_id, None)
            return
        newest = self._newest.get(item.source)
        late = newest if item.event_at is not None and newest is not None and item.event_at < newest else None
        if item.event_at is not None and late is None:
            self._newest[item.source] = item.event_at
        rule = rule_for(self.rules, item.source)
        owner = self._settings.owner_ids[0] if self._settings.owner_ids else None
        # The run service writes the outcome for the owner with the run (when the rule notifies), gives an approval
        # request its expiry job and message id, and checks the alerts, as for any other channel. The run takes the
        # event in the transaction that opens it: after a crash either the event is queued again (no run began) or
        # its run is recovered, never both.
        await self._aria.runs.handle(
            Request(render(item.source, rule, found, item.event_at, late), trigger="event", channel="webhook",
                    chat_id=owner, intake_id=item.event_id, sources=(f"an event from {item.source} (webhook)",)),
            self._channel, notify=rule.notify, live=False)

    def _finish(self, event_id: int, run_id: int | None) -> None:
        with self._ledger.write() as session:
            row = session.get(Event, event_id)
            if row is not None:
                row.processed_at, row.run_id = self._ledger.now(), run_id
                session.add(row)
