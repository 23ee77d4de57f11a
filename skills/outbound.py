"""Outbound: send a message or email to someone other than the owner, after the policy and the owner's approval."""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import socket
import ssl
from email.message import EmailMessage
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field

from aria.errors import ConnectorDown, ToolError
from aria.skills import ToolContext, tool

KEYWORDS = ("send", "email", "mail", "message", "notify", "reply", "customer", "draft", "contact", "write", "webhook")
WEBHOOK = "webhook"
SMTP_TIMEOUT = 20.0


class SendResult(BaseModel):
    """What happened to one outbound message."""

    channel: Literal["email", "webhook"]
    to: str
    accepted: bool
    detail: str


@tool(risk="risky", timeout=45.0, recipient_arg="to", outbound_text_args=("subject", "body"),
      raises=(ToolError, ConnectorDown))
async def send_message(
    ctx: ToolContext,
    to: Annotated[str, Field(min_length=3, max_length=254, description='an email address, or "webhook"')],
    body: Annotated[str, Field(min_length=1, max_length=10_000)],
    subject: Annotated[str, Field(max_length=200)] = "",
) -> SendResult:
    """Send a message to a third party by email or to the configured webhook. Needs the owner's approval."""
    if to == WEBHOOK:
        return await _post(ctx, subject, body)
    if "@" not in to or any(c in to for c in "\r\n,;<>"):
        raise ToolError(f'{to!r} is not an email address or "webhook"')
    return await asyncio.to_thread(_mail, ctx, to, subject, body)


async def _post(ctx: ToolContext, subject: str, body: str) -> SendResult:
    target = ctx.settings.outbound_webhook_url
    if target is None or ctx.connectors is None:
        raise ToolError("no webhook target: set ARIA_OUTBOUND_WEBHOOK_URL")
    # A retried POST must not deliver twice: the receiver can de-duplicate on this key.
    key = hashlib.sha256(f"{ctx.run_id}:{subject}:{body}".encode()).hexdigest()[:32]
    response = await ctx.connectors.get("outbound").request(
        "POST", target.get_secret_value(), json={"to": WEBHOOK, "subject": subject, "body": body},
        headers={"Idempotency-Key": key}, run_id=ctx.run_id,
    )
    if response.status_code >= 400:
        raise ToolError(f"the webhook target refused the message (HTTP {response.status_code})")
    return SendResult(channel="webhook", to=WEBHOOK, accepted=True, detail=f"HTTP {response.status_code}")


def _mail(ctx: ToolContext, to: str, subject: str, body: str) -> SendResult:
    settings = ctx.settings
    if settings.smtp_url is None or not settings.smtp_from:
        raise ToolError("email is not set up: set ARIA_SMTP_URL and ARIA_SMTP_FROM")
    url = urlsplit(settings.smtp_url.get_secret_value())
    if url.scheme not in ("smtp", "smtps") or not url.hostname:
        raise ToolError("ARIA_SMTP_URL must look like smtp://user:password@host:587 or smtps://...")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = settings.smtp_from, to, subject or "(no subject)"
    message.set_content(body)
    try:
        with _connect(url.scheme, url.hostname, url.port) as smtp:
            if url.username:
                smtp.login(unquote(url.username), unquote(url.password or ""))
            refused = smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise ConnectorDown("the mail server", type(exc).__name__) from None
    if refused:
        raise ToolError(f"the mail server refused {', '.join(refused)}")
    return SendResult(channel="email", to=to, accepted=True, detail=f"accepted by {url.hostname}")


def _connect(scheme: str, host: str, port: int | None) -> smtplib.SMTP:
    # gethostname() names this host for EHLO without the DNS lookup smtplib's default (getfqdn) makes.
    local = socket.gethostname()
    if scheme == "smtps":
        return smtplib.SMTP_SSL(host, port or 465, local_hostname=local, timeout=SMTP_TIMEOUT,
                                context=ssl.create_default_context())
    smtp = smtplib.SMTP(host, port or 587, local_hostname=local, timeout=SMTP_TIMEOUT)
    smtp.ehlo()
    if smtp.has_extn("starttls"):
        smtp.starttls(context=ssl.create_default_context())
        smtp.ehlo()
    return smtp
