"""Start-up: from starting an `aria run` process to the fake Bot API recording its first answer.

The message is queued in the fake before the process starts, so the time covers the interpreter, imports, settings,
opening (and on the first start, creating and migrating) the database, discovering skills, the Bot API set-up calls,
the first poll and the first turn with its model call. The baseline is the bare interpreter started the same way
(`python -c pass`). Which heavy imports are deferred is read from `python -X importtime`, both for `import aria.cli`
and for a whole `aria run` through its first answer.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OWNER, aria_process, find_reply, median, table, verdict
from tests.fakes import FakeOpenAI, FakeTelegram

TARGET_SECONDS = 2.0
# Packages that would slow every start if imported eagerly, with what needs them.
HEAVY = {
    "matplotlib": "digest charts", "numpy": "digest charts", "PIL": "digest charts", "trafilatura": "fetch_url",
    "lxml": "fetch_url", "uvicorn": "webhook mode", "starlette": "webhook mode", "genai_prices.data": "prices",
}
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def first_answer(folder: Path, model: FakeOpenAI, telegram: FakeTelegram, flags: tuple[str, ...] = ()) -> float:
    """Seconds from starting `aria run` to the fake recording its answer to a message queued beforehand."""
    telegram.clear_calls()
    started = time.time()
    telegram.add_message("hello", user_id=OWNER)
    with aria_process(["run"], folder, model, telegram, flags=flags, log_name="startup.log") as proc:
        deadline = time.monotonic() + 60
        while (reply := find_reply(telegram, OWNER, started)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"aria run gave no answer; see {folder / 'startup.log'}")
            time.sleep(0.002)
    return reply.at - started


def bare_interpreter() -> float:
    """Seconds to start and stop this interpreter doing nothing: the floor of any Python process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def parse_importtime(log: str) -> dict[str, tuple[int, int]]:
    """Module → (cumulative microseconds, nesting depth) from `-X importtime` output."""
    found: dict[str, tuple[int, int]] = {}
    for match in _LINE.finditer(log):
        found.setdefault(match[4], (int(match[2]), len(match[3]) // 2))
    return found


def top_imports(modules: dict[str, tuple[int, int]], depth: int, count: int = 6) -> str:
    """The slowest imports at one nesting depth with their cumulative time, e.g. `aria.config 127 ms`."""
    top = sorted(((us, name) for name, (us, level) in modules.items() if level == depth), reverse=True)[:count]
    return ", ".join(f"{name} {us / 1000:.0f} ms" for us, name in top)


def deferred(modules: dict[str, tuple[int, int]]) -> tuple[str, str]:
    """(heavy packages never imported, heavy packages imported) by the process that wrote `modules`."""
    loaded = [f"{name} ({why})" for name, why in HEAVY.items() if name in modules]
    absent = [f"{name} ({why})" for name, why in HEAVY.items() if name not in modules]
    return ", ".join(absent) or "none", ", ".join(loaded) or "none"


def measure(starts: int) -> str:
    """First start on a new database, then warm restarts on the same one; returns the table."""
    with FakeOpenAI() as model, FakeTelegram() as telegram, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        cold = first_answer(folder, model, telegram)
        warm = [first_answer(folder, model, telegram) for _ in range(max(1, starts - 1))]
        first_answer(folder, model, telegram, flags=("-X", "importtime"))
        whole_run = parse_importtime((folder / "startup.log").read_text())
    floor = median([bare_interpreter() for _ in range(3)])
    cli = subprocess.run([sys.executable, "-X", "importtime", "-c", "import aria.cli"], capture_output=True,
                         text=True, check=True)
    cli_modules = parse_importtime(cli.stderr)
    absent, loaded = deferred(whole_run)
    warm_median = median(warm)
    return table([
        ("bare interpreter start and exit (`python -c pass`)", f"{floor:.3f} s"),
        ("`aria run` to first answer, new database (migrations run)", f"{cold:.3f} s"),
        (f"`aria run` to first answer, restart, median of {len(warm)} / worst",
         f"{warm_median:.3f} / {max(warm):.3f} s (target ≤ {TARGET_SECONDS:.0f} s, first start and median: "
         f"{verdict(max(cold, warm_median), TARGET_SECONDS)})"),
        ("`import aria.cli` in total", f"{cli_modules['aria.cli'][0] / 1000:.0f} ms"),
        ("`import aria.cli`, slowest of its imports", top_imports(cli_modules, depth=1)),
        ("`aria run` through its first answer, slowest top-level imports", top_imports(whole_run, depth=0)),
        ("heavy imports deferred (not loaded by start-up and a first turn)", absent),
        ("heavy imports loaded by start-up and a first turn", loaded),
    ])


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=6, help="process starts, the first on a new database")
    args = parser.parse_args(argv)
    result = measure(args.starts)
    print(result)
    return result


if __name__ == "__main__":
    main()
