"""Sending to third parties: SMTP and webhook against local servers, behind the policy, the editor and approval."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import callback_data
from aria.ledger import Approval
from tests.fakes import ServerThread

MakeAria = Callable[..., Aria]


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    with socket.socket() as probe:  # aiosmtpd needs a concrete port: borrow a free one from the OS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture
def webhook_target() -> Iterator[tuple[list[dict[str, Any]], str]]:
    received: list[dict[str, Any]] = []

    async def receive(request: HttpRequest) -> JSONResponse:
        received.append({"body": json.loads(await request.body()), "key": request.headers.get("idempotency-key")})
        return JSONResponse({"ok": True})

    server = ServerThread(Starlette(routes=[Route("/hook", receive, methods=["POST"])]), name="outbound-target")
    server.start()
    try:
        yield received, f"{server.url}/hook"
    finally:
        server.stop()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    default = (Path(__file__).parents[1] / "aria" / "defaults" / "policy.toml").read_text()
    path.write_text(default.replace("allow = []", 'allow = ["*@example.com", "webhook"]'))
    return path


async def _approve_latest(aria: Aria, outcome: Any) -> Any:
    assert outcome.status == "awaiting_approval" and outcome.approval_id is not None
    from aria.approvals import parse_callback

    approval = aria.approvals.get(outcome.approval_id)
    assert approval is not None
    press = parse_callback(callback_data(approval, "a"))
    assert press is not None and aria.approvals.decide(press, 1001) == "approved"
    refreshed = aria.approvals.get(outcome.approval_id)
    assert isinstance(refreshed, Approval)
    return await aria.agent.resume(refreshed)


async def test_email_is_sent_after_approval(make_aria: MakeAria, fake_openai: Any, smtp: tuple[Mailbox, int],
                                            policy_file: Path) -> None:
    mailbox, port = smtp
    aria = make_aria(smtp_url=f"smtp://127.0.0.1:{port}", smtp_from="aria@owner.example", policy_file=policy_file)
    fake_openai.enqueue_tool_call("send_message", {"to": "bob@example.com", "subject": "Maintenance",
                                                   "body": "The site is down for maintenance at 22:00."})
    fake_openai.enqueue_text("PASS")  # the editor's review
    fake_openai.enqueue_text("Sent to Bob.")
    outcome = await aria.agent.run(Request("email bob about the maintenance"))
    assert mailbox.messages == []  # waits for the owner
    final = await _approve_latest(aria, outcome)
    assert final.text == "Sent to Bob."
    (mail,) = mailbox.messages
    assert (mail["To"], mail["Subject"]) == ("bob@example.com", "Maintenance")
    assert "22:00" in mail.get_payload()


async def test_webhook_target_gets_the_message_with_an_idempotency_key(make_aria: MakeAria, fake_openai: Any,
                                                                        webhook_target: Any, policy_file: Path) -> None:
    received, url = webhook_target
    aria = make_aria(outbound_webhook_url=url, policy_file=policy_file)
    fake_openai.enqueue_tool_call("send_message", {"to": "webhook", "body": "Deploy finished."})
    fake_openai.enqueue_text("PASS")
    fake_openai.enqueue_text("Posted.")
    final = await _approve_latest(aria, await aria.agent.run(Request("send a message to the webhook")))
    assert final.text == "Posted."
    assert received[0]["body"] == {"to": "webhook", "subject": "", "body": "Deploy finished."}
    assert received[0]["key"]


async def test_recipient_outside_the_allowlist_is_blocked(make_aria: MakeAria, fake_openai: Any,
                                                          smtp: tuple[Mailbox, int], policy_file: Path) -> None:
    mailbox, port = smtp
    aria = make_aria(smtp_url=f"smtp://127.0.0.1:{port}", smtp_from="aria@owner.example", policy_file=policy_file)
    fake_openai.enqueue_tool_call("send_message", {"to": "eve@attacker.example", "body": "hello"})
    fake_openai.enqueue_text("I could not send it.")
    outcome = await aria.agent.run(Request("email eve"))
    assert outcome.status == "ok" and "rule 'recipients'" in outcome.text and mailbox.messages == []


async def test_editor_sends_a_draft_back_once_then_hands_off(make_aria: MakeAria, fake_openai: Any,
                                                             smtp: tuple[Mailbox, int], policy_file: Path) -> None:
    mailbox, port = smtp
    aria = make_aria(smtp_url=f"smtp://127.0.0.1:{port}", smtp_from="aria@owner.example", policy_file=policy_file)
    fake_openai.enqueue_tool_call("send_message", {"to": "bob@example.com", "body": "Sorry! Take 50% off."})
    fake_openai.enqueue_tool_call("send_message", {"to": "bob@example.com", "body": "Sorry! We will refund you."})
    outcome = await aria.agent.run(Request("email bob an apology"))
    assert outcome.status == "handoff" and "rejected twice by the editor" in outcome.text
    assert "no-refunds" in outcome.text and mailbox.messages == []
    first_feedback = fake_openai.completions[1].body["messages"][-1]["content"]
    assert "REJECTED by the editor, rule 'no-discounts'" in first_feedback and "Revise" in first_feedback


async def test_model_review_can_reject_a_draft_within_the_budget(make_aria: MakeAria, fake_openai: Any,
                                                                 smtp: tuple[Mailbox, int],
                                                                 policy_file: Path) -> None:
    mailbox, port = smtp
    aria = make_aria(smtp_url=f"smtp://127.0.0.1:{port}", smtp_from="aria@owner.example", policy_file=policy_file)
    fake_openai.enqueue_tool_call("send_message", {"to": "bob@example.com", "body": "Our DB password is hunter2."})
    fake_openai.enqueue_text("REJECT: leak: leaks an internal password")
    fake_openai.enqueue_text("I won't send that.")
    outcome = await aria.agent.run(Request("email bob the details"))
    assert outcome.text.startswith("I won't send that.") and mailbox.messages == []
    assert "sent back by rule 'editor-review': leak: leaks an internal password" in outcome.text
    told = fake_openai.completions[2].body["messages"][-1]["content"]
    assert "leaks an internal password" in told
    run = aria.ledger.run(outcome.run_id or 0)
    assert run is not None and run.cost_micros > 0
