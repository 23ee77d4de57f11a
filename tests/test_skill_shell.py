"""The shell skill: off unless enabled; when on, one command without a shell, killed with its children on timeout."""

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
from aria.errors import ToolError, ToolInputError
from aria.ledger import Ledger
from aria.skills import ToolContext, ToolSpec, load_skill_file

SKILL = load_skill_file(Path(__file__).parent.parent / "skills" / "shell.py", "test_skills")
TOOLS: dict[str, ToolSpec] = {t.name: t for t in SKILL.tools}


async def gone(pid: int, within: float = 1.0) -> bool:
    """True once `pid` has exited (a zombie counts: only its exit status is left)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.02)
    return False


def make_ctx(tmp_path: Path, **settings: Any) -> ToolContext:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    return ToolContext(settings=Settings(_env_file=None, **settings),  # type: ignore[call-arg]
                       ledger=Ledger.open(tmp_path / "aria.db", clock=clock), clock=clock, chat_id=1)


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return make_ctx(tmp_path, shell_enabled=True)


async def run(ctx: ToolContext, **arguments: Any) -> Any:
    spec = TOOLS["run_command"]
    return await spec.call(ctx, spec.validate(arguments))


def test_run_command_is_risky_and_asks_first() -> None:
    spec = TOOLS["run_command"]
    assert (spec.risk, spec.autonomy) == ("risky", "ask")
    assert {"shell", "command", "systemctl", "logs"} <= SKILL.keywords


async def test_can_be_switched_off_and_the_error_names_the_variable(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, shell_enabled=False)
    with pytest.raises(ToolError, match="ARIA_SHELL_ENABLED"):
        await run(ctx, command="echo hi")


async def test_echo_returns_its_output_and_exit_code_zero(ctx: ToolContext) -> None:
    result = await run(ctx, command="echo hi")

    assert (result.exit_code, result.timed_out, result.stdout, result.stderr) == (0, False, "hi\n", "")
    assert result.truncated is False and 0 <= result.seconds < 5


async def test_a_failing_command_reports_its_exit_code_and_stderr(ctx: ToolContext) -> None:
    code = "import sys; sys.stderr.write('broken'); sys.exit(3)"
    result = await run(ctx, command=f'{sys.executable} -c "{code}"')

    assert (result.exit_code, result.stderr, result.timed_out) == (3, "broken", False)


async def test_no_shell_interprets_the_command(ctx: ToolContext) -> None:
    result = await run(ctx, command="echo $HOME; ls | wc > /tmp/x")

    assert result.exit_code == 0
    assert result.stdout == "$HOME; ls | wc > /tmp/x\n"


async def test_a_timeout_kills_the_command_and_its_children_quickly(ctx: ToolContext) -> None:
    # A parent that starts a child and both sleep: the whole process group must go.
    code = "import subprocess, time; p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); time.sleep(30)"
    started = time.monotonic()
    result = await run(ctx, command=f'{sys.executable} -c "{code}"', timeout_seconds=1)
    elapsed = time.monotonic() - started

    assert result.timed_out is True and result.exit_code == -9
    assert elapsed < 3
    child = int(result.stdout.split()[0])  # output written before the timeout is kept
    assert await gone(child)


async def test_cancelling_the_tool_kills_the_command(ctx: ToolContext) -> None:
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(30)"
    spec = TOOLS["run_command"]
    arguments = spec.validate({"command": f'{sys.executable} -c "{code}"', "timeout_seconds": 60})
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):  # what the tool loop does when a tool runs past its own timeout
            await spec.call(ctx, arguments)

    started = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert [pid for pid in started if not await gone(pid)] == []


async def test_the_configured_limit_caps_the_requested_timeout(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, shell_enabled=True, shell_timeout_seconds=1)
    started = time.monotonic()
    result = await run(ctx, command="sleep 30", timeout_seconds=120)

    assert result.timed_out is True and time.monotonic() - started < 3


async def test_long_output_keeps_only_its_tail(ctx: ToolContext) -> None:
    result = await run(ctx, command=f"{sys.executable} -c \"print('x' * 100000 + 'END')\"")

    assert result.truncated is True
    assert len(result.stdout) == 3000 and result.stdout.endswith("END\n")


async def test_aria_secrets_are_not_passed_to_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value-123456")
    ctx = make_ctx(tmp_path, shell_enabled=True)
    result = await run(ctx, command="env")

    assert "OPENAI_API_KEY" not in result.stdout and "sk-test-secret" not in result.stdout


@pytest.mark.parametrize(("command", "error", "problem"), [
    ("definitely-not-a-command-xyz", ToolError, "command not found"),
    ("echo 'unbalanced", ToolInputError, "cannot parse"),
    ("   ", ToolInputError, "empty"),
])
async def test_bad_commands_are_tool_errors(ctx: ToolContext, command: str, error: type[Exception],
                                            problem: str) -> None:
    with pytest.raises(error, match=problem):
        await run(ctx, command=command)
