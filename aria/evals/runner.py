"""Run one scenario against the real composition (run service, agent loop, gate, ledger) in a temporary data folder.

Scripted mode serves the scenario's model turns from a local OpenAI-compatible server; live mode (`--live`) sends
only the owner's messages to the configured model, and only the model-independent invariants are judged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aria import commands
from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import REFUSALS, PressResult, callback_data, parse_callback
from aria.config import Settings
from aria.digest.service import CATCH_UP_JOB
from aria.documents import DocumentRefused, read_document
from aria.evals.checks import Observed, judge
from aria.evals.model_server import FakeOpenAI
from aria.evals.scenario import Page, Scenario, Step, fill
from aria.evals.serving import ServerThread
from aria.evals.stage import (
    MCP_START_SECONDS,
    OWNER,
    EvalChannel,
    Message,
    closed_port,
    pages_app,
    script,
    store_notes,
    write_mcp,
)
from aria.events import EventIngress
from aria.knowledge.owner import MAX_LEARN_CHARS, learn_document
from aria.runs import retry_request
from aria.sanitize import clean_text
from aria.telegram.attachments import document_incoming, forwarded
from aria.telegram.handlers import ACKNOWLEDGEMENTS, details_text, is_learn

log = logging.getLogger(__name__)
Mode = Literal["scripted", "live"]
# Settings an eval instance takes from the configured ones in live mode: the model and its prices.
LIVE_FIELDS = ("openai_api_key", "openai_base_url", "model_cheap", "model_strong", "model_fallbacks",
               "llm_first_token_seconds", "llm_silence_seconds", "prices_file")


SCENARIO_SECONDS = 180.0  # a scenario still running after this long has failed (a hang must not stall the eval)


class StepProblem(Exception):
    """A step that cannot be played as written (a press with no approval asked): the scenario's failure."""


@dataclass
class Result:
    """How one scenario went."""

    name: str
    source: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    spend_usd: float = 0.0
    steps: int = 0
    model_calls: int = 0
    seconds: float = 0.0
    tags: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # what the owner got, in order

    def to_json(self) -> dict[str, Any]:
        """The JSON object `aria eval --json` prints for it."""
        return {"name": self.name, "passed": self.passed, "failures": self.failures, "file": self.source,
                "spend_usd": round(self.spend_usd, 6), "steps": self.steps, "model_calls": self.model_calls,
                "seconds": round(self.seconds, 3), "tags": self.tags,
                "messages": self.messages}


async def run_scenario(scenario: Scenario, mode: Mode = "scripted", configured: Settings | None = None) -> Result:
    """Run one scenario in a fresh temporary data folder; never raises for what the scenario does."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aria-eval-") as tmp:
        try:
            async with asyncio.timeout(SCENARIO_SECONDS):
                observed = await _play(scenario, mode, configured, Path(tmp))
            failures = observed.problems + judge(observed, mode)
        except TimeoutError:
            return Result(scenario.name, scenario.source, False, [f"still running after {SCENARIO_SECONDS:.0f} s"],
                          seconds=time.monotonic() - started, tags=scenario.tags)
        except Exception as exc:  # a crash is this scenario's failure; the other scenarios still run
            log.exception("scenario %s crashed", scenario.name)
            return Result(scenario.name, scenario.source, False, [f"the eval crashed: {type(exc).__name__}: {exc}"],
                          seconds=time.monotonic() - started, tags=scenario.tags)
    return Result(scenario.name, scenario.source, not failures, failures, spend_usd=observed.spend_usd,
                  steps=observed.step_count, model_calls=observed.model_calls, seconds=time.monotonic() - started,
                  tags=scenario.tags, messages=[m.text for m in observed.messages])


async def _play(scenario: Scenario, mode: Mode, configured: Settings | None, folder: Path) -> Observed:
    secret = "sk-eval-" + secrets.token_urlsafe(24)
    pages: dict[str, Page] = {}
    async with _servers(scenario, mode, pages) as (model, pages_url):
        closed = f"http://127.0.0.1:{closed_port()}"
        scenario = fill(scenario, {"{pages}": pages_url or closed, "{closed}": closed, "{secret}": secret})
        pages.update({page.path: page for page in scenario.pages})
        sources = sorted({s.event for s in scenario.steps if s.event is not None})
        event_secrets = {source: secrets.token_urlsafe(16) for source in sources}
        settings = _settings(scenario, mode, configured, folder, model, secret, event_secrets)
        if model is not None:
            script(model, scenario.model)
            for fault in scenario.faults:
                if fault.kind == "model_down":
                    for name in [fault.model] if fault.model else _models(settings):
                        model.fail_model(name, fault.status, fault.retry_after)
        player = Player(settings, event_secrets, scenario)
        store_notes(player.aria.knowledge, scenario.notes)
        await player.start()
        try:
            for index, step in enumerate(scenario.steps):
                if mode == "live" and step.kind not in ("say", "document"):
                    continue  # live mode: the owner's messages (and documents) only
                try:
                    await player.play(index, step)
                except StepProblem as exc:
                    player.problems.append(f"step {index + 1}: {exc}")
                    break  # later steps depend on this one
        finally:
            await player.close()
        observed = Observed.read(scenario, settings, player.channel.messages, player.silent, player.tools,
                                 player.aria.gate.policy, model.completions if model is not None else [])
        observed.problems = player.problems
        return observed


@contextlib.asynccontextmanager
async def _servers(scenario: Scenario, mode: Mode,
                   served: dict[str, Page]) -> AsyncIterator[tuple[FakeOpenAI | None, str | None]]:
    model = FakeOpenAI() if mode == "scripted" else None
    down = any(f.kind == "pages_down" for f in scenario.faults)
    pages = None if down else ServerThread(pages_app(served), name="eval-pages")
    try:
        if model is not None:
            model.start()
        if pages is not None:
            pages.start()
        yield model, (pages.url if pages is not None else None)
    finally:
        if pages is not None:
            pages.stop()
        if model is not None:
            model.stop()


def _settings(scenario: Scenario, mode: Mode, configured: Settings | None, folder: Path, model: FakeOpenAI | None,
              secret: str, event_secrets: dict[str, str]) -> Settings:
    policy = None
    if scenario.policy is not None:
        policy = folder / "policy.toml"
        policy.write_text(scenario.policy, encoding="utf-8")
    if scenario.event_rules is not None:
        rules = folder / "event-rules.toml"
        rules.write_text(scenario.event_rules, encoding="utf-8")
    values: dict[str, Any] = {
        "data_dir": folder / "data", "owner_ids": [OWNER], "fetch_allow": ["127.0.0.1"],
        "event_secrets": event_secrets, "day_max_usd": 2.0, "log_level": "WARNING",
        "mcp_config": write_mcp(scenario, folder),
    }
    if model is not None:
        values |= {"openai_base_url": model.base_url, "openai_api_key": secret}
    elif configured is not None:
        values |= {name: getattr(configured, name) for name in LIVE_FIELDS}
    if policy is not None:
        values["policy_file"] = policy
    if scenario.event_rules is not None:
        values["event_rules_file"] = folder / "event-rules.toml"
    values |= scenario.settings
    return isolated_settings(values)


def isolated_settings(values: dict[str, Any]) -> Settings:
    """Settings from `values` alone: nothing from this machine's environment or .env leaks into an eval."""
    with _without_environment():
        return Settings(_env_file=None, **values)


_ENVIRONMENT = threading.Lock()  # scenarios run in several threads; the environment is the process's


@contextlib.contextmanager
def _without_environment() -> Iterator[None]:
    with _ENVIRONMENT:
        saved = {k: v for k, v in os.environ.items() if k.startswith(("ARIA_", "OPENAI_", "TELEGRAM_"))}
        for name in saved:
            del os.environ[name]
        try:
            yield
        finally:
            os.environ.update(saved)


def _models(settings: Settings) -> list[str]:
    return list(dict.fromkeys([settings.model_cheap, settings.model_strong, *settings.model_fallbacks]))


class Player:
    """Aria built on the eval's settings, and the owner's actions played against it."""

    def __init__(self, settings: Settings, event_secrets: dict[str, str], scenario: Scenario) -> None:
        self.settings = settings
        self.scenario = scenario
        self.event_secrets = event_secrets
        self.silent: list[str] = []  # steps that left the owner without a message
        self.problems: list[str] = []  # steps that could not be played as written
        self.aria = Aria.build(settings)
        self.channel = EvalChannel(self.aria)
        self.ingress = EventIngress(self.aria, self.channel, settle_seconds=0.0)
        self.tools = self.aria.skills.tools

    async def start(self) -> None:
        """Start Aria with the eval channel, as `aria run` starts it with Telegram, and let its start-up jobs (the
        digest's catch-up check) finish: a scenario over in milliseconds must not stop one half-way."""
        await self.aria.start(self.channel)
        await self.aria.mcp.wait_started(MCP_START_SECONDS)  # its tools listed (and pinned) before the first step
        for _ in range(1000):  # at most about 5 s
            if self.aria.scheduler.aps.get_job(CATCH_UP_JOB) is None and not _scheduled_runs_running(self.aria):
                break
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Stop and close everything this instance opened."""
        await self.ingress.stop()
        await self.aria.stop()
        await self.aria.aclose()

    async def restart(self) -> None:
        """A new process on the same data folder: what the old one left is recovered at start."""
        messages = self.channel.messages
        await self.close()
        self.aria = Aria.build(self.settings)
        self.channel = EvalChannel(self.aria)
        self.channel.messages = messages
        self.ingress = EventIngress(self.aria, self.channel, settle_seconds=0.0)
        await self.start()

    async def play(self, index: int, step: Step) -> None:
        """Do one step; note it when the owner got no message from it."""
        before = len(self.channel.messages)
        runs_before = _event_runs(self.aria)
        if step.kind == "restart":
            await self.restart()
            return
        if step.kind in ("say", "forward"):  # as the Telegram text handler makes them
            origin = (step.sender or "someone") if step.kind == "forward" else None
            incoming = forwarded(origin, clean_text(step.text))
            await self._run(Request(text=incoming.text, trigger=incoming.trigger, channel="telegram",
                                    chat_id=OWNER, user_id=OWNER, sources=incoming.sources))
        elif step.kind == "document":
            await self._document(step)
        elif step.kind == "event":
            await self._event(step.event or "", step.payload, step.signed)
        elif step.kind == "press":
            await self._press(step)
        elif step.kind == "retry":
            await self._retry(step.retry or "again")
        elif step.kind == "command":
            raw = step.command or "/"
            words = raw.split()
            replies = await commands.answer(self.aria, words[0].lstrip("/").lower(), words[1:], chat_id=OWNER,
                                            user_id=OWNER, raw=raw)
            await commands.send(self.aria, self.channel, OWNER, replies)
        await self.channel.deliver(0)
        if step.kind == "event" and _event_runs(self.aria) == runs_before:
            return  # the source's rule found nothing to act on (a passing check): no run, nothing to say
        if len(self.channel.messages) == before:
            self.silent.append(f"step {index + 1} ({step.kind}) left the owner without a message")

    async def _run(self, request: Request) -> None:
        await self.aria.runs.handle(request, self.channel, live=False)

    async def _document(self, step: Step) -> None:
        """A document the owner sends (or forwards from `sender`), read and made into a request exactly as a Telegram
        document is (or refused with the same answer); captioned /learn, its passages become notes, as in Telegram."""
        limit = self.settings.document_max_bytes
        data = self.scenario.document_text(step).encode()
        if step.sender is None and is_learn(step.caption):  # captioned /learn: kept as notes, not answered
            try:
                document = read_document(step.document, data, max(limit, MAX_LEARN_CHARS))
            except DocumentRefused as refusal:
                await self.aria.runs.reply(self.channel, OWNER, str(refusal))
                return
            said = await asyncio.to_thread(learn_document, self.aria.knowledge, document.name, document.text)
            await self.aria.runs.reply(self.channel, OWNER, said)
            return
        try:
            incoming = document_incoming(read_document(step.document, data, limit), step.caption, step.sender,
                                         limit)
        except DocumentRefused as refusal:
            await self.aria.runs.reply(self.channel, OWNER, str(refusal))
            return
        await self._run(Request(text=incoming.text, trigger=incoming.trigger, channel="telegram", chat_id=OWNER,
                                user_id=OWNER, sources=incoming.sources))

    async def _event(self, source: str, payload: dict[str, Any], signed: bool) -> None:
        body = json.dumps(payload).encode()
        key = self.event_secrets[source] if signed else "not-the-secret"  # a forger does not know the secret
        headers = {"content-type": "application/json", **_credentials(self.settings.event_auth_for(source), key, body)}

        async def chunks() -> AsyncIterator[bytes]:
            yield body

        receipt = await self.ingress.receive(source, headers, chunks())
        if not signed:
            if receipt.status_code == 202:
                raise StepProblem(f"a forged event from {source} (wrong signature) was accepted")
            return
        if receipt.status_code not in (200, 202):  # 200: a duplicate, answered and not run again
            raise StepProblem(f"the event from {source} was not accepted: {receipt}")
        await self.ingress.drain()

    async def _press(self, step: Step) -> None:
        rows = _approvals(self.aria)
        if not rows:
            raise StepProblem(f"press {step.press}: no approval was asked")
        try:
            approval = rows[step.approval]
        except IndexError:
            raise StepProblem(f"press {step.press}: approval {step.approval} does not exist "
                               f"({len(rows)} asked)") from None
        assert approval.id is not None
        if step.press == "details":
            await self.aria.runs.reply(self.channel, OWNER, details_text(self.aria, approval.id))
            return

        async def acknowledge(result: PressResult) -> None:
            # What Telegram shows as the press's answer (a toast), here one more message the owner sees.
            text = ACKNOWLEDGEMENTS.get(result) or REFUSALS.get(result, "Nothing was done.")
            self.channel.messages.append(Message(text, "toast", "press", None, approval.id))

        press = parse_callback(callback_data(approval, "a" if step.press == "approve" else "r"))  # as the button
        assert press is not None
        await self.aria.runs.decide(press, OWNER, self.channel, acknowledge)
        await asyncio.sleep(0.01)  # the approval message's edit is delivered on the side

    async def _retry(self, kind: str) -> None:
        run = _last_run(self.aria)
        if run is None:
            raise StepProblem("retry: no run to retry")
        await self._run(retry_request(self.aria.ledger, run, kind, OWNER, OWNER))


def _credentials(mode: str, key: str, body: bytes) -> dict[str, str]:
    """The headers a sender of this auth mode (aria/events.py) sends with `body`."""
    if mode == "github":
        return {"x-hub-signature-256": "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()}
    if mode == "bearer":
        return {"authorization": f"Bearer {key}"}
    if mode == "basic":
        return {"authorization": "Basic " + base64.b64encode(f"eval:{key}".encode()).decode()}
    now = str(int(time.time()))
    signature = hmac.new(key.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    return {"x-aria-signature": f"sha256={signature}", "x-aria-timestamp": now}


def _approvals(aria: Aria) -> list[Any]:
    from sqlmodel import col, select

    from aria.ledger import Approval

    with aria.ledger.read() as session:
        return list(session.exec(select(Approval).order_by(col(Approval.id))).all())


def _event_runs(aria: Aria) -> int:
    from sqlmodel import col, func, select

    from aria.ledger import Run

    with aria.ledger.read() as session:
        return int(session.exec(select(func.count()).select_from(Run).where(col(Run.trigger) == "event")).one())


def _scheduled_runs_running(aria: Aria) -> bool:
    from sqlmodel import col, select

    from aria.ledger import Run

    with aria.ledger.read() as session:
        return session.exec(select(Run.id).where(col(Run.trigger) == "schedule",
                                                 col(Run.status) == "running")).first() is not None


def _last_run(aria: Aria) -> Any:
    from sqlmodel import col, select

    from aria.ledger import Run

    with aria.ledger.read() as session:
        return session.exec(select(Run).where(col(Run.trigger) != "approval").order_by(col(Run.id).desc())).first()


def now_utc() -> dt.datetime:
    """The wall clock, for the eval's own records."""
    return dt.datetime.now(dt.UTC)
