"""Shell: run one command on Aria's host, without a shell, under a timeout. Risky: it waits for the owner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import time
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, Field

from aria.config import Settings
from aria.errors import ToolError, ToolInputError
from aria.skills import ToolContext, tool

KEYWORDS = (
    "run", "command", "shell", "execute", "exec", "bash", "terminal", "restart", "service", "systemctl",
    "journalctl", "logs", "docker", "process", "kill",
)
MAX_TIMEOUT = 300
TAIL = 3000  # characters kept from the end of stdout and of stderr
CHUNK = 65536
GRACE = 1.0  # seconds to finish reading output once the command has exited
# A command sees only these (and the names in ARIA_SHELL_ENV), never Aria's settings: `env` or a read of
# /proc/self/environ would otherwise hand every secret to whoever steers the model.
BASE_ENV = ("PATH", "HOME", "LANG", "TZ")


class CommandResult(BaseModel):
    """How a command ended, with the tails of its output."""

    exit_code: int | None  # negative: killed by that signal
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str
    truncated: bool = False  # True when stdout or stderr lost its beginning


class _Tail:
    """Keeps the last bytes of a stream, so a flood of output cannot fill memory."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.data = bytearray()
        self.dropped = False

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(CHUNK):
            self.data += chunk
            if len(self.data) > self.keep:
                del self.data[: len(self.data) - self.keep]
                self.dropped = True

    def text(self, redact: Callable[[str | None], str | None]) -> tuple[str, bool]:
        """The last TAIL characters with secrets redacted, and whether anything before them was cut.

        Redacting before cutting keeps a secret that straddles the cut from leaving its recognisable tail behind.
        """
        decoded = redact(self.data.decode("utf-8", errors="replace")) or ""
        return decoded[-TAIL:], self.dropped or len(decoded) > TAIL


def _parse(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ToolInputError(f"command: cannot parse it ({exc})") from None
    if not argv:
        raise ToolInputError("command: it is empty")
    return argv


def _child_env(settings: Settings) -> dict[str, str]:
    """The minimal environment a command runs with: an allowlist of names, and no value that is a secret."""
    secrets = settings.secrets()
    names = dict.fromkeys((*BASE_ENV, *settings.shell_env))
    return {name: value for name in names if (value := os.environ.get(name)) is not None
            and not any(secret in value for secret in secrets)}


def _kill_group(pid: int) -> None:
    # The command leads its own session, so its process group holds it and every child it started.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def _spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise ToolError(f"not allowed to execute: {argv[0]}") from None


async def _supervise(proc: asyncio.subprocess.Process, limit: float, out: _Tail, err: _Tail) -> bool:
    """Wait for the command and its output, killing its process group on timeout; True if it timed out."""
    assert proc.stdout is not None and proc.stderr is not None
    readers = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
    timed_out = False
    try:
        try:
            async with asyncio.timeout(limit):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        # A child that outlives the command (a daemon) may hold the pipes open; don't wait on it for long.
        await asyncio.wait(readers, timeout=GRACE)
    finally:
        if proc.returncode is None:  # cancelled from outside (the tool's timeout, shutdown): leave nothing running
            _kill_group(proc.pid)
        for task in readers:
            task.cancel()
    return timed_out


@tool(risk="risky", command_arg="command", timeout=MAX_TIMEOUT + 10.0,
      keywords=("run", "command", "shell", "execute"))
async def run_command(
    ctx: ToolContext,
    command: Annotated[str, Field(min_length=1, max_length=4000)],
    timeout_seconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT)] = 20,
) -> CommandResult:
    """Run one command on Aria's host without a shell (no pipes, redirects, globs or $VARS); returns the exit
    code and the last 3000 characters of stdout and stderr."""
    settings = ctx.settings
    if not settings.shell_enabled:
        raise ToolError("run_command is switched off on this host (ARIA_SHELL_ENABLED=false)")
    argv = _parse(command)
    limit = min(float(timeout_seconds), settings.shell_timeout_seconds)
    out, err = _Tail(TAIL * 4), _Tail(TAIL * 4)  # 4 bytes per character at most in UTF-8
    started = time.monotonic()
    proc = await _spawn(argv, _child_env(settings))
    timed_out = await _supervise(proc, limit, out, err)
    (stdout, cut_out), (stderr, cut_err) = out.text(ctx.ledger.redact), err.text(ctx.ledger.redact)
    return CommandResult(
        exit_code=proc.returncode, timed_out=timed_out, seconds=round(time.monotonic() - started, 2),
        stdout=stdout, stderr=stderr, truncated=cut_out or cut_err,
    )
