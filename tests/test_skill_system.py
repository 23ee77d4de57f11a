"""The system skill: a host snapshot from psutil, quick enough for a chat turn."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from aria.clock import ManualClock
from aria.config import Settings
from aria.errors import ToolInputError
from aria.ledger import Ledger
from aria.skills import ToolContext, ToolSpec, load_skill_file

SKILL = load_skill_file(Path(__file__).parent.parent / "skills" / "system.py", "test_skills")
TOOLS: dict[str, ToolSpec] = {t.name: t for t in SKILL.tools}


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    settings = Settings(_env_file=None, timezone="Europe/Berlin", data_dir=tmp_path / "data")  # type: ignore[call-arg]
    return ToolContext(settings=settings, ledger=Ledger.open(tmp_path / "aria.db", clock=clock), clock=clock)


async def call(ctx: ToolContext, name: str, **arguments: Any) -> Any:
    spec = TOOLS[name]
    return await spec.call(ctx, spec.validate(arguments))


def test_the_skill_declares_host_health_with_its_keywords() -> None:
    assert set(TOOLS) == {"host_health"}
    assert {"disk", "memory", "cpu", "uptime", "processes"} <= SKILL.keywords


@pytest.fixture
def real_tmp(tmp_path: Path) -> str:
    return str(tmp_path.resolve())


async def test_host_health_reports_sane_figures_within_a_second_and_a_half(ctx: ToolContext, real_tmp: str) -> None:
    started = time.monotonic()
    health = await call(ctx, "host_health", top=3)
    elapsed = time.monotonic() - started

    assert elapsed < 1.5
    # The data dir does not exist yet: its nearest existing parent is measured instead.
    assert [d.path for d in health.disks] == ["/", real_tmp]
    for disk in health.disks:
        assert disk.total_gb > 0 and 0 <= disk.percent <= 100 and disk.free_gb <= disk.total_gb
    assert 0 < health.memory.available_mb <= health.memory.total_mb
    assert 0 <= health.memory.swap_used_mb <= health.memory.swap_total_mb
    assert len(health.load) == 3 and all(x >= 0 for x in health.load)
    assert health.cpu_count == psutil.cpu_count()
    assert 0 <= health.cpu_percent <= 100
    assert health.uptime.endswith("m")
    boot = dt.datetime.strptime(health.boot_time, "%Y-%m-%d %H:%M").replace(tzinfo=ctx.settings.tz)
    assert boot < dt.datetime.now(dt.UTC)
    assert 1 <= len(health.top_memory) <= 3 and 1 <= len(health.top_cpu) <= 3
    memory = [p.percent for p in health.top_memory]
    assert memory == sorted(memory, reverse=True)
    assert all(p.pid > 0 and p.name for p in health.top_memory + health.top_cpu)


async def test_host_health_attributes_cpu_to_a_busy_process(ctx: ToolContext) -> None:
    busy = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    try:
        await asyncio.sleep(0.1)
        health = await call(ctx, "host_health", top=3)
    finally:
        busy.kill()
        await busy.wait()

    hot = {p.pid: p.percent for p in health.top_cpu}
    assert busy.pid in hot and hot[busy.pid] > 20


async def test_host_health_lists_the_data_dir_when_it_exists(ctx: ToolContext) -> None:
    ctx.settings.data_dir.mkdir()
    health = await call(ctx, "host_health")
    assert [d.path for d in health.disks][-1] == str(ctx.settings.data_dir.resolve())


async def test_host_health_rejects_an_absurd_top(ctx: ToolContext) -> None:
    with pytest.raises(ToolInputError, match="top"):
        await call(ctx, "host_health", top=500)
