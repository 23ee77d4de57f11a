"""Signed event ingress: verification, size limit, replay window, deduplication, rules, event-time order."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from aria.app import Aria
from aria.channel import Quiet
from aria.clock import ManualClock
from aria.config import load_settings
from aria.errors import ConfigError
from aria.event_rules import load_rules
from aria.events import EventIngress
from aria.ledger import Event, Run
from aria.web import build_web_app
from tests.conftest import OWNER

AM_SECRET = "am-secret-0123456789"
GH_SECRET = "gh-secret-9876543210"
BACKUP_SECRET = "backup-secret-555555"
GRAFANA_SECRET = "grafana-secret-4444"


class Inbox:
    """A channel standing in for Telegram: records what the owner is delivered, from the outbox rows."""

    name = "telegram"

    def __init__(self, aria: Aria) -> None:
        self.aria = aria
        self.messages: list[tuple[int, str]] = []

    def live(self, chat_id: int | None) -> Quiet:
        return Quiet()

    async def deliver(self, outbox_id: int) -> int | None:
        row = self.aria.outbox.get(outbox_id)
        assert row is not None
        self.messages.append((row.chat_id, row.text))
        self.aria.outbox.mark_delivered(outbox_id, None)
        return None

    async def tell_directly(self, chat_id: int, text: str) -> bool:
        self.messages.append((chat_id, text))
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def signed(body: bytes, secret: str = AM_SECRET, timestamp: int | None = None, **extra: str) -> dict[str, str]:
    """Headers for Aria's scheme: HMAC-SHA256 over f"{timestamp}.{body}" (or the body alone without a timestamp)."""
    material = body if timestamp is None else f"{timestamp}.".encode() + body
    headers = {"X-Aria-Signature": "sha256=" + hmac.new(secret.encode(), material, hashlib.sha256).hexdigest()}
    if timestamp is not None:
        headers["X-Aria-Timestamp"] = str(timestamp)
    headers.update(extra)
    return headers


def alerts(name: str, *, status: str = "firing", starts: str = "2026-03-01T10:00:00Z",
           ends: str = "0001-01-01T00:00:00Z") -> bytes:
    alert = {"status": status, "labels": {"alertname": name, "severity": "critical", "instance": "db1:9100"},
             "annotations": {"summary": f"{name} on db1"}, "startsAt": starts, "endsAt": ends}
    return json.dumps({"version": "4", "status": status, "receiver": "aria", "alerts": [alert]}).encode()


def workflow_run(conclusion: str, run_id: int, updated: str = "2026-03-01T10:00:00Z") -> bytes:
    return json.dumps({"action": "completed", "repository": {"full_name": "owner/app"},
                       "workflow_run": {"id": run_id, "name": "CI", "head_branch": "main", "conclusion": conclusion,
                                        "html_url": f"https://github.com/owner/app/actions/runs/{run_id}",
                                        "updated_at": updated, "created_at": updated}}).encode()


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    digest = hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery, "X-GitHub-Event": "workflow_run"}


class Harness:
    """Aria, its ingress and an HTTP client on the ASGI app."""

    def __init__(self, aria: Aria, ingress: EventIngress, inbox: Inbox, client: httpx.AsyncClient) -> None:
        self.aria, self.ingress, self.inbox, self.client = aria, ingress, inbox, client

    async def post(self, source: str, body: bytes | Any, headers: dict[str, str]) -> httpx.Response:
        return await self.client.post(f"/events/{source}", content=body, headers=headers)

    def events(self) -> list[Event]:
        with self.aria.ledger.read() as s:
            return list(s.exec(select(Event).order_by(Event.id)))

    def runs(self) -> list[Run]:
        with self.aria.ledger.read() as s:
            return list(s.exec(select(Run).where(Run.trigger != "schedule").order_by(Run.id)))


@pytest.fixture
async def make_harness(make_aria: Callable[..., Aria]) -> AsyncIterator[Callable[..., Any]]:
    built: list[tuple[EventIngress, httpx.AsyncClient]] = []

    async def make(settle_seconds: float = 0.05, **overrides: Any) -> Harness:
        values: dict[str, Any] = {"event_secrets": {"alertmanager": AM_SECRET, "github": GH_SECRET,
                                                    "backup": BACKUP_SECRET, "grafana": GRAFANA_SECRET},
                                  "event_max_bytes": 1024}
        values.update(overrides)
        aria = make_aria(**values)
        inbox = Inbox(aria)
        aria.runs.attach(inbox)
        ingress = EventIngress(aria, inbox, settle_seconds=settle_seconds)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_web_app(aria, None, ingress=ingress)),
                                   base_url="http://aria.test")
        built.append((ingress, client))
        return Harness(aria, ingress, inbox, client)

    yield make
    for ingress, client in built:
        await ingress.stop()
        await client.aclose()


def last_user_text(request: Any) -> str:
    return str(request.body["messages"][-1]["content"])


def alert_of(request_text: str) -> tuple[str, str]:
    """(status, alertname) of the single alert fenced in a run's request."""
    found = re.search(r'"status":"(\w+)","alert":"(\w+)"', request_text)
    assert found is not None, request_text
    return found.group(1), found.group(2)


async def test_verified_alertmanager_event_runs_and_tells_the_owner(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness()
    fake_openai.enqueue_text("DiskFull on db1 since 10:00 UTC: check /var first.")
    body = alerts("DiskFull")
    response = await h.post("alertmanager", body, signed(body, timestamp=int(time.time())))
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    await h.ingress.drain()
    assert h.inbox.messages == [(OWNER, "DiskFull on db1 since 10:00 UTC: check /var first.")]
    (run,) = h.runs()
    assert (run.trigger, run.channel, run.chat_id, run.status) == ("event", "webhook", OWNER, "ok")
    (event,) = h.events()
    assert (event.source, event.status, event.verified, event.run_id) == ("alertmanager", "accepted", True, run.id)
    assert event.processed_at is not None and event.payload == body.decode()
    assert event.event_at is not None and event.event_at.isoformat().startswith("2026-03-01T10:00:00")
    sent = last_user_text(fake_openai.completions[0])
    assert '<tool_output tool="event:alertmanager" id="' in sent and '"alert":"DiskFull"' in sent


async def test_bad_or_missing_signature_is_refused_with_a_row_and_nothing_runs(make_harness: Any,
                                                                               fake_openai: Any) -> None:
    h = await make_harness()
    body = alerts("DiskFull")
    wrong = await h.post("alertmanager", body, signed(body, secret="not-the-secret"))
    missing = await h.post("alertmanager", body, {})
    github_header_elsewhere = await h.post("alertmanager", body, github_headers(body, "d-1"))
    assert [r.status_code for r in (wrong, missing, github_header_elsewhere)] == [401, 401, 401]
    assert wrong.json() == {"status": "refused", "reason": "bad signature"}
    await h.ingress.drain()
    assert h.runs() == [] and fake_openai.completions == [] and h.inbox.messages == []
    rows = h.events()
    assert [(e.status, e.verified, e.reason) for e in rows] == [
        ("refused", False, "bad signature"), ("refused", False, "missing signature"),
        ("refused", False, "missing signature")]
    assert all(e.payload is None and e.delivery_id is None for e in rows)
    assert AM_SECRET not in wrong.text


async def test_oversized_body_is_refused_before_it_is_parsed(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness()
    big = b'{"pad": "' + b"x" * 2000 + b'"}'
    declared = await h.post("alertmanager", big, signed(big))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 300  # no Content-Length: the limit applies while reading

    streamed = await h.post("alertmanager", chunks(), signed(b"irrelevant"))
    assert declared.status_code == streamed.status_code == 413
    rows = h.events()
    assert [e.reason for e in rows] == ["body over 1024 bytes"] * 2
    assert all(e.body_sha256 is None and e.payload is None for e in rows)  # never hashed, never parsed
    assert fake_openai.completions == [] and h.runs() == []


async def test_stale_future_and_tampered_timestamps_are_refused(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness()
    body = alerts("DiskFull")
    now = int(time.time())
    stale = await h.post("alertmanager", body, signed(body, timestamp=now - 301))
    future = await h.post("alertmanager", body, signed(body, timestamp=now + 3600))
    tampered = signed(body, timestamp=now - 3600) | {"X-Aria-Timestamp": str(now)}  # old signature, fresh stamp
    replay = await h.post("alertmanager", body, tampered)
    assert [r.status_code for r in (stale, future, replay)] == [401, 401, 401]
    assert [e.reason for e in h.events()] == ["stale timestamp", "timestamp in the future", "bad signature"]
    assert fake_openai.completions == [] and h.runs() == []


async def test_a_repeated_delivery_id_runs_once(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness()
    body = alerts("DiskFull")
    first = await h.post("alertmanager", body, signed(body, timestamp=int(time.time()), **{"X-Aria-Delivery": "d-7"}))
    again = await h.post("alertmanager", body, signed(body, timestamp=int(time.time()), **{"X-Aria-Delivery": "d-7"}))
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["status"] == "duplicate"
    await h.ingress.drain()
    assert len(fake_openai.completions) == 1 and len(h.runs()) == 1 and len(h.inbox.messages) == 1
    assert [(e.status, e.delivery_id) for e in h.events()] == [("accepted", "d-7"), ("duplicate", None)]


async def test_unknown_source_and_malformed_json_are_refused(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness()
    unknown = await h.post("nagios", b"{}", signed(b"{}"))
    not_json = await h.post("alertmanager", b"{oops", signed(b"{oops"))
    assert (unknown.status_code, not_json.status_code) == (404, 400)
    assert [(e.source, e.reason, e.verified) for e in h.events()] == [
        ("nagios", "unknown source", False), ("alertmanager", "body is not UTF-8 JSON", True)]
    assert fake_openai.completions == []


async def test_out_of_order_events_are_processed_in_event_time_order(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness(settle_seconds=0.3)
    later = alerts("Second", starts="2026-03-01T10:05:00Z")
    earlier = alerts("First", starts="2026-03-01T10:00:00Z")
    resolved = alerts("First", status="resolved", ends="2026-03-01T10:10:00Z")
    for body in (resolved, later, earlier):  # arrive newest first
        assert (await h.post("alertmanager", body, signed(body, timestamp=int(time.time())))).status_code == 202
    await h.ingress.drain()
    assert [alert_of(last_user_text(r)) for r in fake_openai.completions] == [
        ("firing", "First"), ("firing", "Second"), ("resolved", "First")]
    straggler = alerts("Zeroth", starts="2026-03-01T09:00:00Z")
    await h.post("alertmanager", straggler, signed(straggler, timestamp=int(time.time())))
    await h.ingress.drain()
    assert "may be out of date" in last_user_text(fake_openai.completions[-1])
    assert [e.event_at.minute for e in h.events() if e.event_at] == [10, 5, 0, 0]


async def test_github_signature_scheme_and_only_failures_cost_a_model_call(make_harness: Any,
                                                                           fake_openai: Any) -> None:
    h = await make_harness()
    failed, passed = workflow_run("failure", 11), workflow_run("success", 12)
    assert (await h.post("github", failed, github_headers(failed, "gh-1"))).status_code == 202
    assert (await h.post("github", passed, github_headers(passed, "gh-2"))).status_code == 202
    replay = await h.post("github", failed, github_headers(failed, "gh-forged-new-id"))
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    await h.ingress.drain()
    assert len(fake_openai.completions) == 1
    assert "actions/runs/11" in last_user_text(fake_openai.completions[0])
    accepted = [e for e in h.events() if e.status == "accepted"]
    assert [(e.delivery_id, e.run_id is not None, e.processed_at is not None) for e in accepted] == [
        ("gh-1", True, True), ("gh-2", False, True)]
    assert len(h.inbox.messages) == 1


async def test_rules_file_overrides_prompt_and_notify(make_harness: Any, fake_openai: Any, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[sources.backup]\nprompt = "Reply with OK only."\nnotify = false\n')
    h = await make_harness(event_rules_file=rules)
    body = json.dumps({"job": "nightly", "result": "ok", "timestamp": "2026-03-01T02:00:00Z"}).encode()
    assert (await h.post("backup", body, signed(body, secret=BACKUP_SECRET))).status_code == 202
    await h.ingress.drain()
    (run,) = h.runs()
    assert run.request.startswith("Reply with OK only.") and run.status == "ok"
    assert h.inbox.messages == []  # notify = false: recorded, not sent
    (event,) = h.events()
    assert event.event_at is not None and event.event_at.hour == 2

    rules.write_text('[sources.backup]\nprompt = 3\n')
    with pytest.raises(ConfigError, match="ARIA_EVENT_RULES_FILE"):
        load_rules(rules)


async def test_events_left_unprocessed_by_a_stop_run_after_the_next_start(make_harness: Any,
                                                                          fake_openai: Any) -> None:
    h = await make_harness(settle_seconds=5)
    body = alerts("DiskFull")
    assert (await h.post("alertmanager", body, signed(body, timestamp=int(time.time())))).status_code == 202
    await h.ingress.stop()  # the process stops before the event's turn
    assert fake_openai.completions == [] and h.events()[0].processed_at is None
    restarted = EventIngress(h.aria, h.inbox, settle_seconds=0)
    assert await restarted.start() == 1
    await restarted.drain()
    assert h.events()[0].processed_at is not None and len(h.inbox.messages) == 1


async def test_deeply_nested_json_and_absurd_event_times_get_clean_answers(make_harness: Any,
                                                                          fake_openai: Any) -> None:
    h = await make_harness(event_max_bytes=400_000)
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = await h.post("backup", deep, signed(deep, secret=BACKUP_SECRET, timestamp=int(time.time())))
    assert nested.status_code == 400 and nested.json()["reason"] == "body is nested too deeply"
    huge_stamp = await h.post("backup", b"{}", signed(b"{}", secret=BACKUP_SECRET, timestamp=10**30))
    assert huge_stamp.status_code == 401
    far = alerts("ClockSkew", starts="9999-12-31T23:59:59Z")
    accepted = await h.post("alertmanager", far, signed(far, timestamp=int(time.time())))
    assert accepted.status_code == 202
    await h.ingress.drain()
    event = next(e for e in h.events() if e.status == "accepted")
    assert event.event_at is None or event.event_at.year < 9999  # not believed: it would order every later event


async def test_an_approval_asked_for_by_an_event_run_gets_its_expiry_job(make_harness: Any, fake_openai: Any,
                                                                         probe_skills: Path) -> None:
    h = await make_harness(skills_dir=probe_skills)
    fake_openai.enqueue_tool_call("list_tools", {})  # the event's request is not offered write_mark by itself
    fake_openai.enqueue_tool_call("write_mark", {"label": "restart db1"})
    fake_openai.enqueue_text("PASS")  # the editor's review of the draft
    body = alerts("DiskFull")
    assert (await h.post("alertmanager", body, signed(body, timestamp=int(time.time())))).status_code == 202
    await h.ingress.drain()
    (approval,) = h.aria.approvals.pending()
    assert h.aria.scheduler.aps.get_job(f"approval-expiry:{approval.id}") is not None
    assert [text for _, text in h.inbox.messages if text.startswith("Approval needed")]  # shown to the owner


async def test_an_event_whose_run_began_before_a_stop_is_not_run_again_at_the_next_start(
        make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness(settle_seconds=0)
    body = alerts("DiskFull")
    assert (await h.post("alertmanager", body, signed(body, timestamp=int(time.time())))).status_code == 202
    await h.ingress.drain()
    (event,) = h.events()
    assert event.processed_at is not None and event.run_id is not None  # taken by its run when the run opened
    restarted = EventIngress(h.aria, h.inbox, settle_seconds=0)
    assert await restarted.start() == 0
    assert len(fake_openai.completions) == 1


# Authentication modes, replays and real senders ---------------------------------------------------------------


def alertmanager_v4(name: str = "DiskFull") -> bytes:
    """A webhook body exactly as Prometheus Alertmanager sends it (the documented version 4 shape)."""
    labels = {"alertname": name, "instance": "db1:9100", "job": "node", "severity": "critical"}
    return json.dumps({
        "version": "4",
        "groupKey": "{}:{alertname=\"" + name + "\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "aria",
        "groupLabels": {"alertname": name},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "Disk almost full on db1", "description": "/var is 97% full."},
        "externalURL": "http://alertmanager.example.org:9093",
        "alerts": [{
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": "Disk almost full on db1", "description": "/var is 97% full."},
            "startsAt": "2026-03-01T10:00:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example.org:9090/graph?g0.expr=node_filesystem_avail_bytes",
            "fingerprint": "c4b5f0e9a1d2b3c4",
        }],
    }).encode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_alertmanager_v4_webhook_with_a_bearer_token_becomes_a_run_and_a_message(make_harness: Any,
                                                                                      fake_openai: Any) -> None:
    h = await make_harness(event_auth={"alertmanager": "bearer"}, event_max_bytes=64 * 1024)
    fake_openai.enqueue_text("DiskFull on db1: /var is 97% full since 10:00 UTC.")
    body = alertmanager_v4()
    response = await h.post("alertmanager", body, {"Authorization": f"Bearer {AM_SECRET}",
                                                   "Content-Type": "application/json",
                                                   "User-Agent": "Alertmanager/0.27.0"})
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    await h.ingress.drain()
    assert h.inbox.messages == [(OWNER, "DiskFull on db1: /var is 97% full since 10:00 UTC.")]
    (run,) = h.runs()
    assert (run.trigger, run.chat_id, run.status) == ("event", OWNER, "ok")
    (event,) = h.events()
    assert (event.status, event.verified, event.run_id, event.delivery_id) == ("accepted", True, run.id, None)
    assert alert_of(last_user_text(fake_openai.completions[0])) == ("firing", "DiskFull")


async def test_bearer_token_wrong_missing_or_in_another_scheme_is_refused(make_harness: Any,
                                                                          fake_openai: Any) -> None:
    h = await make_harness(event_auth={"alertmanager": "bearer"})
    body = alerts("DiskFull")
    refused = [await h.post("alertmanager", body, headers) for headers in (
        {"Authorization": "Bearer not-the-secret"},
        {"Authorization": f"Bearer {AM_SECRET}x"},
        {},
        basic("alertmanager", AM_SECRET),
        {"Authorization": f"Token {AM_SECRET}"},
        signed(body, timestamp=int(time.time())),  # a valid HMAC is not what this source was told to send
    )]
    assert [r.status_code for r in refused] == [401] * 6
    assert [e.reason for e in h.events()] == [
        "bad credentials", "bad credentials", "missing credentials", "wrong authorization scheme",
        "wrong authorization scheme", "missing credentials"]
    assert all(e.payload is None and not e.verified for e in h.events()) and AM_SECRET not in refused[1].text
    accepted = await h.post("alertmanager", body, {"Authorization": f"bearer  {AM_SECRET} "})  # scheme is any case
    assert accepted.status_code == 202
    await h.ingress.drain()
    assert len(fake_openai.completions) == 1 and len(h.inbox.messages) == 1


async def test_basic_auth_takes_the_secret_as_password_with_any_user(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness(event_auth={"grafana": "basic"})
    body = json.dumps({"title": "[FIRING:1] HighLatency", "state": "alerting",
                       "timestamp": "2026-03-01T10:00:00Z"}).encode()
    refused = [await h.post("grafana", body, headers) for headers in (
        basic("grafana", "wrong-password"),
        basic(GRAFANA_SECRET, "x"),  # the secret as user name is not the password
        {"Authorization": "Basic " + base64.b64encode(GRAFANA_SECRET.encode()).decode()},  # no user:password
        {"Authorization": "Basic %%%not-base64"},
        {"Authorization": f"Bearer {GRAFANA_SECRET}"},
        {},
    )]
    assert [r.status_code for r in refused] == [401] * 6
    assert [e.reason for e in h.events()] == ["bad credentials"] * 4 + [
        "wrong authorization scheme", "missing credentials"]
    assert (await h.post("grafana", body, basic("grafana", GRAFANA_SECRET))).status_code == 202
    other = body.replace(b"HighLatency", b"LowDisk")
    assert (await h.post("grafana", other, basic("", GRAFANA_SECRET))).status_code == 202  # any user, even none
    await h.ingress.drain()
    assert len(h.runs()) == 2 and len(h.inbox.messages) == 2


async def test_github_form_encoded_payload_is_accepted(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness(event_max_bytes=8192)
    payload = workflow_run("failure", 21)
    body = urllib.parse.urlencode({"payload": payload.decode()}).encode()
    headers = github_headers(body, "gh-form-1") | {"Content-Type": "application/x-www-form-urlencoded"}
    response = await h.post("github", body, headers)
    assert response.status_code == 202
    await h.ingress.drain()
    assert "actions/runs/21" in last_user_text(fake_openai.completions[0])
    (event,) = h.events()
    assert event.payload == payload.decode() and event.body_sha256 == hashlib.sha256(body).hexdigest()
    no_payload = b"other=1"
    missing = await h.post("github", no_payload, github_headers(no_payload, "gh-form-2")
                           | {"Content-Type": "application/x-www-form-urlencoded"})
    assert missing.status_code == 400 and missing.json()["reason"] == "form body has no single payload field"


async def test_a_captured_signed_delivery_replayed_with_fresh_delivery_ids_runs_once(make_harness: Any,
                                                                                     fake_openai: Any) -> None:
    h = await make_harness()
    body = alerts("DiskFull")
    now = int(time.time())
    captured = signed(body, timestamp=now)
    assert (await h.post("alertmanager", body, captured | {"X-Aria-Delivery": "d-1"})).status_code == 202
    replays = [await h.post("alertmanager", body, captured | {"X-Aria-Delivery": f"d-new-{i}"}) for i in range(5)]
    without_id = await h.post("alertmanager", body, captured)
    assert [r.json()["status"] for r in [*replays, without_id]] == ["duplicate"] * 6
    await h.ingress.drain()
    assert len(fake_openai.completions) == 1 and len(h.runs()) == 1 and len(h.inbox.messages) == 1
    assert [e.delivery_id for e in h.events() if e.status == "duplicate"] == [None] * 6  # replays claim no id
    # The sender itself signing the same body anew is a new event; its retry under the same id is not.
    resent = signed(body, timestamp=now - 1, **{"X-Aria-Delivery": "d-2"})
    assert (await h.post("alertmanager", body, resent)).status_code == 202
    retry = signed(body, timestamp=now, **{"X-Aria-Delivery": "d-2"})
    assert (await h.post("alertmanager", body, retry)).json()["status"] == "duplicate"


async def test_a_bearer_body_is_a_duplicate_within_the_window_and_runs_again_after_it(make_harness: Any,
                                                                                      fake_openai: Any) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    h = await make_harness(clock=clock, event_auth={"alertmanager": "bearer"}, event_max_age_seconds=300)
    body, token = alerts("DiskFull"), {"Authorization": f"Bearer {AM_SECRET}"}
    assert (await h.post("alertmanager", body, token)).status_code == 202
    clock.advance(299)
    again = await h.post("alertmanager", body, token | {"X-Aria-Delivery": "fresh"})
    assert again.status_code == 200 and again.json()["reason"] == "same content as an event accepted in the last 300 s"
    clock.advance(2)  # Alertmanager's repeat_interval reminder, long after: worth telling again
    assert (await h.post("alertmanager", body, token)).status_code == 202
    await h.ingress.drain()
    assert len(h.runs()) == 2


async def test_out_of_range_timestamps_get_401_with_an_event_row(make_harness: Any, fake_openai: Any) -> None:
    h = await make_harness()
    body = alerts("DiskFull")
    far = await h.post("alertmanager", body, signed(body, timestamp=999999999999))
    huge = await h.post("alertmanager", body, signed(body, timestamp=10**30))
    unsigned = await h.post("alertmanager", body, signed(body, timestamp=int(time.time()))
                            | {"X-Aria-Timestamp": "999999999999"})
    assert [r.status_code for r in (far, huge, unsigned)] == [401, 401, 401]
    assert [(e.status, e.reason) for e in h.events()] == [
        ("refused", "timestamp in the future"), ("refused", "bad timestamp"), ("refused", "bad signature")]
    assert fake_openai.completions == [] and h.runs() == []


def test_event_auth_setting_names_its_variable_when_wrong() -> None:
    settings = load_settings(event_secrets="alertmanager=a,grafana=b", event_auth="alertmanager=bearer, grafana=Basic")
    assert settings.event_auth == {"alertmanager": "bearer", "grafana": "basic"}
    assert (settings.event_auth_for("github"), settings.event_auth_for("backup")) == ("github", "hmac")
    with pytest.raises(ConfigError, match=r"ARIA_EVENT_AUTH: 'alertmanager=token'.*hmac, github, bearer, basic"):
        load_settings(event_secrets="alertmanager=a", event_auth="alertmanager=token")
    with pytest.raises(ConfigError, match="ARIA_EVENT_AUTH: no secret in ARIA_EVENT_SECRETS for grafana"):
        load_settings(event_secrets="alertmanager=a", event_auth="grafana=basic")
