"""Secrets never reach commands or the model: a minimal environment, and redaction of every encoding of a secret."""

from __future__ import annotations

import base64
import io
import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.config import load_settings
from aria.errors import ConfigError
from aria.ledger import Approval, Step
from aria.ledger.redact import Redactor
from aria.terminal import chat

MakeAria = Callable[..., Aria]
# Chosen so every encoding differs from the plain text: '/', '+', '&', '?' need URL escapes, and '>>>???' turns
# into base64 '+' and '/', which base64url spells '-' and '_'.
EVENT_SECRET = "gh/Event+Secret&Value?>>>???~42"
BOT_TOKEN = "123456789:AAH-bot-token-value-abcdefghijklmnopqrst"
WEBHOOK_SECRET = "webhook-secret-value-0123456789"
OPENAI_KEY = "sk-test-key-0000000000000000"


def encoded_forms(secret: str) -> dict[str, str]:
    """How a command or page could spell the secret, each inside realistic surrounding text."""
    raw = secret.encode()
    forms = {f"base64 at offset {k}": base64.b64encode(b"HOME=/root\n"[:k] + raw + b"\nPATH=/bin").decode()
             for k in range(3)}
    forms["base64 wrapped like `env | base64`"] = "\n".join(textwrap.wrap(base64.b64encode(
        b"LANG=C.UTF-8\nSHELL=/bin/bash\nARIA_EVENT_SECRETS=github=" + raw + b"\nTERM=xterm\n" * 3).decode(), 76))
    forms["base64url"] = base64.urlsafe_b64encode(b"x=" + raw).decode().rstrip("=")
    forms["hex lower"] = raw.hex()
    forms["hex upper"] = raw.hex().upper()
    forms["url-encoded"] = "https://evil.example/?q=" + quote(secret, safe="")
    forms["url-encoded, lower-case escapes"] = quote(secret, safe="").replace("%2F", "%2f").replace("%2B", "%2b")
    forms["form-encoded"] = "token=" + quote_plus(secret)
    return forms


def _leaked(text: str, secret: str) -> list[str]:
    """The encodings of `secret` that can still be decoded out of `text`."""
    raw = secret.encode()
    found = [name for name, form in encoded_forms(secret).items() if form in text]
    compact = text.replace("\n", "").replace("\\n", "")
    for k in range(3):
        probe = base64.b64encode(b"\0" * k + raw).decode()[-(-8 * k // 6):8 * (k + len(raw)) // 6]
        if probe in compact or probe.replace("+", "-").replace("/", "_") in compact:
            found.append(f"base64 fragment at offset {k}")
    if raw.hex() in compact.lower() or secret in text or quote(secret, safe="") in text:
        found.append("plain, hex or url")
    return found


@pytest.mark.parametrize("name", list(encoded_forms(EVENT_SECRET)))
def test_redactor_replaces_every_encoding_of_a_secret(name: str) -> None:
    text = encoded_forms(EVENT_SECRET)[name]
    cleaned = Redactor([EVENT_SECRET])(text) or ""
    assert "[redacted]" in cleaned and _leaked(cleaned, EVENT_SECRET) == []


@pytest.mark.parametrize("offset", [0, 1, 2])
@pytest.mark.parametrize("tail", [0, 1, 2])
def test_base64_is_caught_at_every_alignment_whatever_follows(offset: int, tail: int) -> None:
    stream = base64.b64encode(os.urandom(30 + offset) + EVENT_SECRET.encode() + os.urandom(tail)).decode()
    cleaned = Redactor([EVENT_SECRET])(stream) or ""
    assert "[redacted]" in cleaned and _leaked(cleaned, EVENT_SECRET) == []


def test_redactor_leaves_ordinary_text_alone() -> None:
    text = "df -h: /dev/sda1 40G 12G 28G 30% / and base64 aGVsbG8gd29ybGQ= and hex 68656c6c6f"
    assert Redactor([EVENT_SECRET, WEBHOOK_SECRET])(text) == text


LEAK_SKILL = '''"""A page that carries a secret in every encoding (as `env | base64` or a crafted URL would)."""
from aria.skills import ToolContext, tool
from tests.test_guard_secrets import encoded_forms

KEYWORDS = ("leak",)


@tool()
def leak_probe(ctx: ToolContext) -> str:
    """Return the event secret, encoded every way."""
    secret = ctx.settings.event_secrets["github"].get_secret_value()
    return "\\n".join(f"{name}: {form}" for name, form in encoded_forms(secret).items())
'''


async def test_encoded_secrets_in_tool_output_reach_neither_the_model_nor_the_ledger(
        make_aria: MakeAria, fake_openai: Any, tmp_path: Path) -> None:
    folder = tmp_path / "leak_skills"
    folder.mkdir()
    (folder / "leak.py").write_text(LEAK_SKILL)
    fake_openai.enqueue_tool_call("leak_probe", {})
    fake_openai.enqueue_text("Nothing secret here.")
    aria = make_aria(skills_dir=folder, event_secrets=f"github={EVENT_SECRET}")
    outcome = await aria.agent.run(Request("leak probe please"))

    told = json.dumps(fake_openai.completions[1].body["messages"])
    assert told.count("[redacted]") >= len(encoded_forms(EVENT_SECRET))
    assert _leaked(json.loads(told)[-1]["content"], EVENT_SECRET) == []
    (step,) = [s for s in aria.ledger.steps(outcome.run_id) if s.name == "leak_probe"]
    assert step.status == "ok" and "[redacted]" in (step.result or "")
    assert _leaked(step.result or "", EVENT_SECRET) == []


@pytest.fixture
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aria configured from its environment, as on a real host: every secret is in os.environ."""
    monkeypatch.setenv("ARIA_EVENT_SECRETS", f"github={EVENT_SECRET}")
    monkeypatch.setenv("ARIA_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ARIA_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("ARIA_SHELL_ENV", "KEEP_ME,LEAKY_BUT_LISTED")
    monkeypatch.setenv("KEEP_ME", "kept-value")
    monkeypatch.setenv("LEAKY_BUT_LISTED", f"prefix-{WEBHOOK_SECRET}")  # listed, but its value holds a secret
    monkeypatch.setenv("NOT_LISTED", "not-passed")


@pytest.mark.usefixtures("secrets_in_environment")
async def test_an_approved_env_shows_no_secret_and_no_setting(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_tool_call("run_command", {"command": "env"})
    fake_openai.enqueue_text("Here is the environment.")
    aria = make_aria(openai_api_key=OPENAI_KEY)
    out = io.StringIO()
    await chat(aria, io.StringIO("run the command env\n/approve 1\n"), out)

    with aria.ledger.read() as s:
        approval = s.exec(select(Approval)).one()
        (step,) = s.exec(select(Step).where(Step.kind == "tool", Step.name == "run_command")).all()
    assert approval.status == "executed" and step.status == "ok"
    output = json.loads(step.result or "{}")["stdout"]
    told = fake_openai.completions[-1].body["messages"][-1]["content"]
    for seen in (output, told):
        assert "KEEP_ME=kept-value" in seen and "PATH=" in seen
        for leaked in ("ARIA_", "TELEGRAM_", "OPENAI_", "NOT_LISTED", "LEAKY_BUT_LISTED", "[redacted]",
                       EVENT_SECRET, WEBHOOK_SECRET, BOT_TOKEN, OPENAI_KEY):
            assert leaked not in seen  # "[redacted]" absent: nothing secret was there to hide


def test_shell_env_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(shell_env=" LC_ALL , KUBECONFIG,").shell_env == ["LC_ALL", "KUBECONFIG"]
    monkeypatch.setenv("ARIA_SHELL_ENV", "LC_ALL,ARIA_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match="ARIA_SHELL_ENV: ARIA_WEBHOOK_SECRET is one of Aria's settings"):
        load_settings()
    monkeypatch.setenv("ARIA_SHELL_ENV", "NOT A NAME")
    with pytest.raises(ConfigError, match="ARIA_SHELL_ENV: 'NOT A NAME' is not an environment variable name"):
        load_settings()


def test_credentials_inside_secret_urls_are_secrets_on_their_own(make_settings: Any) -> None:
    settings = make_settings(
        outbound_webhook_url="https://hooks.example/services/T0KEN-abcdefghijklmnop?sig=0123456789abcdefXYZ",
        smtp_url="smtp://aria:hunter2-password@mail.example:587")
    secrets = settings.secrets()
    assert "T0KEN-abcdefghijklmnop" in secrets and "0123456789abcdefXYZ" in secrets
    assert "hunter2-password" in secrets and "services" not in secrets
