"""What the benchmarks share: percentiles, markdown tables, settings pointing Aria at the fake servers."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aria.config import Settings
from tests.fakes import Call, FakeOpenAI, FakeTelegram

OWNER = 1001
REPLY_METHODS = ("sendMessage", "editMessageText")
Row = tuple[str, str]


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` of the values fall (nearest rank; no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def median(values: Sequence[float]) -> float:
    """The median, 0 for no values (a tiny smoke run may produce none)."""
    return statistics.median(values) if values else 0.0


def ms(seconds: float) -> str:
    """Seconds as milliseconds, two decimals."""
    return f"{seconds * 1000:.2f} ms"


def verdict(value: float, target: float) -> str:
    """Whether a lower-is-better figure meets its target."""
    return "met" if value <= target else "missed"


def table(rows: Sequence[Row], head: Row = ("figure", "value")) -> str:
    """A two-column markdown table."""
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def grid(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with any number of columns."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def settings_for(folder: Path, model_url: str, **overrides: Any) -> Settings:
    """Settings in a temporary folder with the fake model as endpoint; nothing is read from .env."""
    values: dict[str, Any] = {
        "data_dir": folder, "openai_base_url": model_url, "openai_api_key": "bench", "owner_ids": [OWNER],
        # A day cap no benchmark reaches unless it means to: thousands of turns must not hit it by accident.
        "day_max_usd": 1000.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def bench_env(folder: Path, model: FakeOpenAI, telegram: FakeTelegram) -> dict[str, str]:
    """Environment for an `aria run` subprocess against the fakes (the caller adds PATH and the like)."""
    return {
        "TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_API_URL": telegram.api_url,
        "ARIA_OWNER_IDS": str(OWNER), "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "bench",
        "ARIA_DATA_DIR": str(folder), "ARIA_DAY_MAX_USD": "1000", "ARIA_LOG_LEVEL": "WARNING",
    }


def find_reply(fake: FakeTelegram, chat_id: int, after: float) -> Call | None:
    """The first reply (sendMessage or editMessageText) to `chat_id` the fake recorded at or after `after`."""
    for call in list(fake.calls):
        if call.method in REPLY_METHODS and call.at >= after and call.params.get("chat_id") == chat_id:
            return call
    return None


def aria_command(*args: str, flags: Sequence[str] = ()) -> list[str]:
    """The `aria` command run by this interpreter, so interpreter flags (`-X importtime`) can be added."""
    return [sys.executable, *flags, "-c", "import sys; from aria.cli import main; sys.exit(main())", *args]


def floor_command() -> list[str]:
    """The floor bot (bench/floor_bot.py) run as a process by this interpreter."""
    return [sys.executable, str(Path(__file__).with_name("floor_bot.py"))]


@contextmanager
def aria_process(args: Sequence[str], folder: Path, model: FakeOpenAI, telegram: FakeTelegram, *,
                 flags: Sequence[str] = (), stdin: int | None = None,
                 log_name: str = "aria.log") -> Iterator[subprocess.Popen[bytes]]:
    """An `aria` subprocess against the fakes, run in `folder` (so no .env is read); stopped by SIGTERM on exit."""
    with bench_process(aria_command(*args, flags=flags), folder, model, telegram, stdin=stdin,
                       log_name=log_name) as proc:
        yield proc


@contextmanager
def bench_process(command: Sequence[str], folder: Path, model: FakeOpenAI, telegram: FakeTelegram, *,
                  stdin: int | None = None, log_name: str = "aria.log") -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess configured for the fakes by environment, run in `folder`; stopped by SIGTERM on exit.

    Its stdout and stderr go to files in `folder`: a pipe nobody reads would fill and stall it.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ARIA_", "OPENAI_", "TELEGRAM_"))}
    env = {**inherited, **bench_env(folder, model, telegram)}
    with (folder / f"{log_name}.out").open("wb") as out, (folder / log_name).open("wb") as err:
        proc = subprocess.Popen(list(command), cwd=folder, env=env, stdin=stdin, stdout=out, stderr=err)
        try:
            yield proc
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Aria stops gracefully on it), then SIGKILL if it has not stopped within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
