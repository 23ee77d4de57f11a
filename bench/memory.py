"""Memory and leaks: resident memory (RSS) of real Aria processes as turns go through the fake servers.

Three processes, each measured from the outside with psutil so the fakes and this harness never count:

- `aria run`, the Telegram bot, and beside it the floor (bench/floor_bot.py: python-telegram-bot + openai and nothing
  else) run as a process the same way, each against a fresh fake Bot API: RSS once it has answered its first message
  (queued before the process starts, so that is start-up done) and after a few hundred turns. Both are read at the same
  points, a settling pause after the reply, and the target is on Aria's RSS against the floor's. Turns are paced under
  Telegram's flood limit (30 requests/s, two a turn), which Aria's rate limiter enforces, so this part cannot reach
  thousands of turns in a bounded time.
- `aria chat`, the same agent loop, ledger and model client without Telegram, fed 10,000 turns through stdin
  against the fake model: RSS at start, after 1,000 and after 10,000 turns, and the trend after warm-up (the
  least-squares slope of RSS over the second half of the run).

Every turn is "hello" in one chat, so each request also carries the chat's history, as an owner's would.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import OWNER, aria_command, aria_process, bench_process, find_reply, floor_command, table, verdict
from tests.fakes import FakeOpenAI, FakeTelegram

MB = 1024 * 1024
TARGET_MB = 150.0
TARGET_RATIO = 1.25  # Aria's RSS against the floor's, at start and after the Telegram turns
SETTLE = 0.5  # seconds after a reply before RSS is read: work after sending (ledger rows) is part of the turn
FLAT_MB_PER_1000 = 0.5  # a slope below this (MB per 1,000 turns) is noise, not a trend
TURN_EVERY = 0.075


@dataclass
class Samples:
    """(turns done, RSS in MB) pairs from one process."""

    points: list[tuple[int, float]] = field(default_factory=list)

    def at(self, turns: int) -> float:
        """RSS at the first sample taken at or after `turns`."""
        return next(mb for done, mb in self.points if done >= turns)

    def slope_per_1000(self) -> float:
        """Least-squares slope of RSS over the second half of the samples, in MB per 1,000 turns."""
        half = self.points[len(self.points) // 2:]
        if len(half) < 2:
            return 0.0
        xs, ys = [x for x, _ in half], [y for _, y in half]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in half) / spread if spread else 0.0


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    """Resident memory of a process, in MB."""
    return float(psutil.Process(proc.pid).memory_info().rss) / MB


def _wait(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _turn(telegram: FakeTelegram, proc: subprocess.Popen[bytes], name: str) -> float:
    """Send "hello" from the owner and wait for the reply; returns when it was injected."""
    telegram.clear_calls()
    injected = time.time()
    telegram.add_message("hello", user_id=OWNER)

    def replied() -> object:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see its log in the benchmark folder")
        return find_reply(telegram, OWNER, injected)

    _wait(replied, f"a reply from {name}")
    return injected


def bot_footprint(command: list[str], name: str, folder: Path, model: FakeOpenAI, turns: int) -> tuple[float, float]:
    """RSS of a bot process once it has answered its first message, and after `turns` Telegram turns in all."""
    with FakeTelegram() as telegram, bench_process(command, folder, model, telegram, log_name="bot.log") as proc:
        _turn(telegram, proc, name)  # queued as the process starts: its answer ends start-up
        time.sleep(SETTLE)
        at_start = rss_mb(proc)
        for _ in range(turns - 1):
            injected = _turn(telegram, proc, name)
            time.sleep(max(0.0, injected + TURN_EVERY - time.time()))
        time.sleep(SETTLE)
        return at_start, rss_mb(proc)


class Counter:
    """Model calls served by the fake so far; drains its request log so the harness itself stays small."""

    def __init__(self, model: FakeOpenAI) -> None:
        self.model, self.total = model, 0
        self.model.requests.clear()  # calls from before this counter started are not its turns

    def __call__(self) -> int:
        seen = len(self.model.requests)
        del self.model.requests[:seen]  # one slice deletion: requests arriving meanwhile are kept
        self.total += seen
        return self.total


def chat_trend(folder: Path, model: FakeOpenAI, telegram: FakeTelegram, turns: int, checkpoint: int) -> Samples:
    """RSS of `aria chat` after its first turn, at the checkpoint, at the end, and at 40 points between."""
    every = max(10, turns // 40)
    targets = sorted({1, checkpoint, turns, *range(every, turns, every)})
    samples = Samples()
    count = Counter(model)
    with aria_process(["chat"], folder, model, telegram, stdin=subprocess.PIPE, log_name="chat.log") as proc:
        assert proc.stdin is not None
        fed = 0
        for target in targets:
            proc.stdin.write(b"hello\n" * (target - fed))
            proc.stdin.flush()
            fed = target
            _wait(lambda goal=target: count() >= goal, f"turn {target} of aria chat")
            samples.points.append((target, rss_mb(proc)))
        proc.stdin.close()
        proc.wait(timeout=30)
    return samples


def _ratio(ours: float, floor: float) -> str:
    ratio = ours / floor
    return f"{ours:.1f} MB ({ratio:.2f}x the floor; target ≤ {TARGET_RATIO}x: {verdict(ratio, TARGET_RATIO)})"


def report(floor: tuple[float, float], bot: tuple[float, float], bot_turns: int, chat: Samples, turns: int,
           checkpoint: int, seconds: float) -> str:
    """The table of figures."""
    slope = chat.slope_per_1000()
    peak = max([*bot, *(mb for _, mb in chat.points)])
    return table([
        ("floor (PTB + openai) RSS after its first answer", f"{floor[0]:.1f} MB"),
        (f"floor RSS after {bot_turns} Telegram turns", f"{floor[1]:.1f} MB"),
        ("`aria run` RSS after its first answer", _ratio(bot[0], floor[0])),
        (f"`aria run` RSS after {bot_turns} Telegram turns", _ratio(bot[1], floor[1])),
        ("`aria chat` RSS after its first turn", f"{chat.at(1):.1f} MB"),
        (f"`aria chat` RSS after {checkpoint:,} turns", f"{chat.at(checkpoint):.1f} MB"),
        (f"`aria chat` RSS after {turns:,} turns", f"{chat.at(turns):.1f} MB"),
        ("growth after warm-up (slope over the second half)",
         f"{slope:+.2f} MB per 1,000 turns ({'no trend' if abs(slope) <= FLAT_MB_PER_1000 else 'trend'})"),
        ("highest RSS seen", f"{peak:.1f} MB (target ≤ {TARGET_MB:.0f} MB: {verdict(peak, TARGET_MB)})"),
        ("`aria chat` turns per second", f"{turns / seconds:.0f}"),
    ])


def measure(turns: int, checkpoint: int, bot_turns: int) -> str:
    """Run the floor, `aria run` and `aria chat` against the fakes, one after another; returns the table."""
    with FakeOpenAI() as model, FakeTelegram() as telegram, tempfile.TemporaryDirectory() as folder:
        floor_dir, run_dir, chat_dir = Path(folder) / "floor", Path(folder) / "run", Path(folder) / "chat"
        for each in (floor_dir, run_dir, chat_dir):
            each.mkdir()
        floor = bot_footprint(floor_command(), "the floor bot", floor_dir, model, bot_turns)
        bot = bot_footprint(aria_command("run"), "aria run", run_dir, model, bot_turns)
        started = time.monotonic()
        chat = chat_trend(chat_dir, model, telegram, turns, checkpoint)
        seconds = time.monotonic() - started
    return report(floor, bot, bot_turns, chat, turns, checkpoint, seconds)


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10_000, help="turns through `aria chat` (default 10,000)")
    parser.add_argument("--checkpoint", type=int, default=1_000, help="the intermediate reading (default 1,000)")
    parser.add_argument("--bot-turns", type=int, default=300, help="Telegram turns through `aria run` (default 300)")
    args = parser.parse_args(argv)
    result = measure(args.turns, min(args.checkpoint, args.turns), args.bot_turns)
    print(result)
    return result


if __name__ == "__main__":
    main()
