"""`aria doctor`: check settings, database, skills, Bot API and model endpoint; print a table."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import openai
from telegram import Bot
from telegram.error import TelegramError

from aria.app import Aria, data_dir_writable
from aria.config import Settings
from aria.errors import AriaError
from aria.netguard import METADATA_ADDRESSES, REFUSED_SUMMARY
from aria.strangers import refused_users

Verdict = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    verdict: Verdict
    detail: str


async def run_checks(aria: Aria) -> list[Check]:
    """Every check, in order; none raises."""
    settings = aria.settings
    checks = [Check("settings", "ok", f"owners {len(settings.owner_ids)}, time zone {settings.timezone}")]
    checks.append(owners(aria))
    writable = data_dir_writable(settings.data_dir)
    checks.append(Check("database", "ok" if writable else "fail",
                        f"{settings.db_path} (WAL, migrated)" if writable else f"{settings.data_dir} is not writable"))
    checks.append(Check("skills", "fail" if aria.skills.broken else "ok",
                        "; ".join(f"{b.name}: {b.error}" for b in aria.skills.broken)
                        or f"{len(aria.skills.skills)} skills, {len(aria.skills.tools)} tools"))
    checks.append(fetch_rule(settings))
    checks.append(await _bot_api(aria))
    checks += await _model_endpoint(aria)
    checks.append(voice_notes(aria))
    checks.append(knowledge_models(aria))
    checks += await _mcp_servers(aria)
    return checks


async def _mcp_servers(aria: Aria) -> list[Check]:
    """Each MCP server in ARIA_MCP_CONFIG: started here, given its timeout to connect, then closed."""
    from aria.mcp.cli import listing
    from aria.mcp.views import server_line

    if not aria.mcp.servers:
        return []
    await listing(aria)
    checks = [Check(f"mcp {c.name}", "ok" if c.state == "up" else "fail",
                    server_line(c) + (f", {len(c.tools)} tools" if c.state == "up" else ""))
              for c in aria.mcp.servers.values()]
    await aria.mcp.stop()
    return checks


def owners(aria: Aria) -> Check:
    """The owner list, and the users the bot refused lately: a typo'd owner id shows up here at once."""
    ids = aria.settings.owner_ids
    if not ids:
        return Check("owners", "fail", "ARIA_OWNER_IDS is empty: the bot would answer nobody (aria run refuses to "
                     "start); set it to your numeric Telegram user ID")
    refused = refused_users(aria.ledger)
    if not refused:
        return Check("owners", "ok", f"ARIA_OWNER_IDS {', '.join(map(str, ids))}; nobody refused")
    seen = "; ".join(f"{r.user_id} ({r.updates} update{'s' if r.updates != 1 else ''}, last {r.last:%Y-%m-%d %H:%M} "
                     f"UTC)" for r in refused)
    return Check("owners", "warn", f"ARIA_OWNER_IDS {', '.join(map(str, ids))}; last refused users: {seen}. If one "
                 "of them is you, put that id in ARIA_OWNER_IDS")


def voice_notes(aria: Aria) -> Check:
    """Whether voice notes are transcribed, and at what price a minute (an unpriced model is refused)."""
    transcriber = aria.transcriber
    if transcriber is None:
        return Check("voice notes", "ok", "off (set ARIA_TRANSCRIBE_MODEL to transcribe them)")
    try:
        price = transcriber.price()
    except AriaError as exc:
        return Check("voice notes", "fail", f"{transcriber.model}: {exc}")
    return Check("voice notes", "ok", f"{transcriber.model} at ${price.usd:g} a minute ({price.source})")


def knowledge_models(aria: Aria) -> Check:
    """The embedding models notes are found with (checked on disk, not loaded), and how many notes have a vector."""
    from importlib.util import find_spec

    from aria.knowledge.contextual import MODEL_SHA256, NAME, ModelUnavailable, model_folder, weights_digest

    with aria.ledger.read_conn() as conn:
        notes = int(conn.exec_driver_sql("SELECT count(*) FROM note").scalar_one())
        embedded = int(conn.exec_driver_sql("SELECT count(*) FROM note_vector").scalar_one())
    counts = f"{notes} notes, {embedded} with a stored vector"
    if find_spec("wordllama") is None:
        return Check("knowledge", "warn", f"{counts}; no embedding model: notes are found by their words only "
                                          "(reinstall with make)")
    try:
        found = weights_digest(model_folder())
    except (ModelUnavailable, OSError) as exc:
        return Check("knowledge", "warn", f"{counts}; static model only ({exc})")
    if found != MODEL_SHA256:
        return Check("knowledge", "fail", f"{counts}; the {NAME} weights are not the published ones (sha256 "
                                          f"{found[:12]}…): reinstall with make")
    return Check("knowledge", "ok", f"{counts}; static model and {NAME} (weights verified)")


def fetch_rule(settings: Settings) -> Check:
    """The SSRF rule fetch_url and check_url follow: what is refused, and what ARIA_FETCH_ALLOW lets through."""
    allow = settings.fetch_allowed
    detail = f"fetch_url/check_url refuse {REFUSED_SUMMARY}; ARIA_FETCH_ALLOW allows {allow.describe()}"
    opened = sorted(str(a) for a in METADATA_ADDRESSES if allow.allows_address(a))
    if opened:
        return Check("web fetch", "warn", f"{detail} (this lets cloud metadata through: {', '.join(opened)})")
    return Check("web fetch", "ok", detail)


async def _bot_api(aria: Aria) -> Check:
    token = aria.settings.telegram_bot_token
    if token is None:
        return Check("telegram", "warn", "TELEGRAM_BOT_TOKEN not set (aria chat still works)")
    try:
        async with Bot(token.get_secret_value(), base_url=aria.settings.bot_api_base) as bot:
            me = await asyncio.wait_for(bot.get_me(), timeout=15)
    except (TelegramError, TimeoutError) as exc:
        return Check("telegram", "fail", f"getMe failed at {aria.settings.telegram_api_url}: {type(exc).__name__}")
    return Check("telegram", "ok", f"@{me.username} via {aria.settings.telegram_api_url}")


async def _model_endpoint(aria: Aria) -> list[Check]:
    settings = aria.settings
    if aria.caller is None:
        return [Check("model", "warn", "no endpoint: set OPENAI_API_KEY or OPENAI_BASE_URL")]
    checks: list[Check] = []
    try:
        models = await asyncio.wait_for(aria.caller.client.models.list(), timeout=15)
        names = {m.id for m in models.data}
        checks.append(Check("model endpoint", "ok", f"{aria.caller.endpoint}: {len(names)} models listed"))
    except (openai.APIError, TimeoutError) as exc:
        checks.append(Check("model endpoint", "fail", f"{aria.caller.endpoint}: {type(exc).__name__}"))
        names = set()
    for model in dict.fromkeys([settings.model_cheap, settings.model_strong, *settings.model_fallbacks]):
        priced = aria.prices.is_known(model)
        listed = not names or model in names
        verdict: Verdict = "ok" if priced and listed else "fail"
        detail = "priced" if priced else "no price: calls refused (set ARIA_PRICES_FILE)"
        checks.append(Check(f"model {model}", verdict, detail + ("" if listed else ", not listed by the endpoint")))
    return checks


def render(checks: list[Check]) -> str:
    """A plain table."""
    width = max(len(c.name) for c in checks)
    marks = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}
    return "\n".join(f"{marks[c.verdict]}  {c.name.ljust(width)}  {c.detail}" for c in checks)
