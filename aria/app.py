"""The composition root: builds every part from the settings and hands each its collaborators."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from aria import __version__
from aria.agent.gate import Gate
from aria.agent.loop import Agent
from aria.agent.state import Request
from aria.agent.toolrun import ToolRunner
from aria.alerts import Alerts
from aria.approvals import Approvals
from aria.breaker import BreakerBoard
from aria.channel import Channel
from aria.clock import Clock, SystemClock
from aria.config import Settings
from aria.connectors import Connectors
from aria.control import current_router
from aria.digest import DigestService
from aria.jobs import restore_reminders, schedule_reminder
from aria.knowledge import Knowledge
from aria.ledger import Ledger
from aria.ledger.redact import Redactor
from aria.llm.budget import Budget
from aria.llm.client import ModelCaller
from aria.llm.pricing import PriceBook
from aria.llm.router import Router
from aria.llm.stream import Windows
from aria.llm.transcription import Transcriber, build_transcriber
from aria.mcp.config import load_mcp_config
from aria.mcp.hub import McpHub
from aria.outbox import Outbox
from aria.policy import load_policy
from aria.rollout import Rollout
from aria.runs import RunService
from aria.scheduler import Scheduler
from aria.skills import SkillSet, ToolContext, builtin_skills_dir, discover
from aria.strangers import Strangers

log = logging.getLogger(__name__)
ReminderHook = Callable[[int, dt.datetime], None]


@dataclass
class Aria:
    """Every long-lived part of Aria, built once per process."""

    settings: Settings
    ledger: Ledger
    skills: SkillSet
    prices: PriceBook
    budget: Budget
    board: BreakerBoard
    connectors: Connectors
    router: Router
    caller: ModelCaller | None
    agent: Agent
    gate: Gate
    approvals: Approvals
    scheduler: Scheduler
    outbox: Outbox
    mcp: McpHub
    knowledge: Knowledge
    started_at: dt.datetime
    version: str = __version__
    on_reminder: ReminderHook | None = None
    telegram_mode: str = "off"  # set by the channel that runs: polling, webhook
    digests: DigestService = field(init=False, repr=False)
    alerts: Alerts = field(init=False, repr=False)
    runs: RunService = field(init=False, repr=False)
    rollout: Rollout = field(init=False, repr=False)
    channels: list[Channel] = field(default_factory=list, repr=False)
    strangers: Strangers = field(default_factory=Strangers, repr=False)  # non-owners warned about today
    transcriber: Transcriber | None = field(default=None, repr=False)  # voice notes; None while they are off
    _openai: openai.AsyncOpenAI | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, *, clock: Clock | None = None,
              sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
              mcp_targets: dict[str, Any] | None = None) -> Aria:
        """Wire everything from settings; opening the ledger migrates it. `mcp_targets` puts in-process MCP servers
        in place of configured ones (tests)."""
        clock = clock or SystemClock()
        mcp_config = load_mcp_config(settings.mcp_config)  # a bad servers file is a ConfigError naming it
        ledger = Ledger.open(settings.db_path, clock=clock,
                             redactor=Redactor([*settings.secrets(), *mcp_config.secrets()]))
        folders = [builtin_skills_dir(), *([settings.skills_dir] if settings.skills_dir else [])]
        skills = discover(folders)
        for broken in skills.broken:
            ledger.add_failure("skills", f"{broken.name}: {broken.error}", "reported")
        is_openai = not settings.openai_base_url or "api.openai.com" in settings.openai_base_url
        prices = PriceBook(settings.prices_file, provider_id="openai" if is_openai else None)
        budget = Budget(ledger, prices, day_cap_usd=settings.day_max_usd, tz=settings.tz,
                        provider=_provider_name(settings))
        board = BreakerBoard(ledger, failure_threshold=settings.breaker_failures,
                             cooldown=settings.breaker_cooldown_seconds)
        connectors = Connectors(ledger, board, tz=settings.tz, sleep=sleep, user_agent=f"Aria/{__version__}")
        router = current_router(settings, budget.overrides)
        client, caller = _model_caller(settings, ledger, budget, board, sleep)
        policy = load_policy(settings.policy_file)
        gate = Gate(ledger, policy, allow_risky_auto=settings.allow_risky_auto, fetch_allow=settings.fetch_allowed)
        approvals = Approvals(ledger, settings.approval_ttl_hours)
        outbox = Outbox(ledger)
        hub = McpHub(mcp_config, skills, ledger, board, outbox, settings.owner_ids, log_dir=settings.data_dir / "logs",
                     targets=mcp_targets)
        runner = ToolRunner(skills, ledger, gate)
        knowledge = Knowledge(ledger)
        agent = Agent(settings, ledger, skills, budget, caller, router, runner=runner, approvals=approvals,
                      policy=policy, context_factory=lambda run_id, request: aria.tool_context(run_id, request),
                      knowledge=knowledge)
        aria = cls(settings=settings, ledger=ledger, skills=skills, prices=prices, budget=budget, board=board,
                   connectors=connectors, router=router, caller=caller, agent=agent, gate=gate, approvals=approvals,
                   scheduler=Scheduler(ledger, settings.tz), outbox=outbox, mcp=hub, knowledge=knowledge,
                   started_at=ledger.now(),
                   _openai=client)
        aria.digests = DigestService(aria, aria.outbox)
        aria.alerts = Alerts(aria, aria.outbox)
        aria.runs = RunService(aria)
        aria.transcriber = build_transcriber(settings, ledger, budget)
        aria.rollout = Rollout(aria)
        runner.on_shadow = aria.rollout.propose
        return aria

    async def start(self, *channels: Channel) -> None:
        """Start serving `channels`: their delivery first (what an earlier process left undelivered goes out), then
        recovery of what it left unfinished, then the jobs whose state lives in the ledger (reminders, approval
        expiries, the daily digest) and the scheduler. Every channel (Telegram, `aria chat`) starts this way. MCP
        servers connect in the background meanwhile: none delays the first answer."""
        self.mcp.start()
        for channel in channels:
            self.runs.attach(channel)
            await channel.start()
            self.channels.append(channel)
        await self.runs.recover()
        self.on_reminder = lambda reminder_id, due_at: schedule_reminder(self, self.outbox, reminder_id, due_at)
        restore_reminders(self, self.outbox)
        self.digests.schedule(self.scheduler)
        self.scheduler.start()

    async def stop(self) -> None:
        """Stop in reverse order: the scheduler, background runs (left for the next start to resume), then each
        channel's delivery after the message in flight. Undelivered messages stay in the outbox."""
        self.scheduler.shutdown()
        await self.runs.stop()
        for channel in reversed(self.channels):
            await channel.stop()
        self.channels.clear()
        await self.mcp.stop()

    def tool_context(self, run_id: int, request: Request) -> ToolContext:
        """What a tool of this run may use."""
        return ToolContext(settings=self.settings, ledger=self.ledger, clock=self.ledger.clock, run_id=run_id,
                           chat_id=request.chat_id, connectors=self.connectors, on_reminder=self.on_reminder)

    async def aclose(self) -> None:
        """Stop the scheduler, close network clients and the database pool."""
        self.scheduler.shutdown()
        await self.mcp.stop()
        await self.connectors.aclose()
        if self._openai is not None:
            await self._openai.close()
        if self.transcriber is not None:
            await self.transcriber.client.close()
        self.ledger.engine.dispose()


def _provider_name(settings: Settings) -> str:
    if not settings.openai_base_url:
        return "openai"
    from urllib.parse import urlsplit

    return urlsplit(settings.openai_base_url).netloc or "custom"


def _model_caller(settings: Settings, ledger: Ledger, budget: Budget, board: BreakerBoard,
                  sleep: Callable[[float], Awaitable[None]]) -> tuple[openai.AsyncOpenAI | None, ModelCaller | None]:
    if not settings.model_configured:
        return None, None
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "unused"
    # One retry loop owns retries (ours): the client's own are off so each attempt is budgeted and recorded.
    windows = Windows(first_token=settings.llm_first_token_seconds, silence=settings.llm_silence_seconds)
    client = openai.AsyncOpenAI(api_key=key, base_url=settings.openai_base_url, max_retries=0,
                                timeout=windows.backstop)
    caller = ModelCaller(client, ledger, budget, board, base_url=str(client.base_url), windows=windows, sleep=sleep)
    return client, caller


def data_dir_writable(path: Path) -> bool:
    """True when the data directory exists (or can be made) and is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError:
        return False
    return True
