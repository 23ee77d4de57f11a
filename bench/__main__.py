"""`python -m bench`: run the benchmarks in order, print each table and write them all to bench/results/latest.md.

    python -m bench                      every benchmark at full size (what `make bench` runs)
    python -m bench telegram budget      only those (names from --list); the other sections of the results
                                         file are kept as they were
    python -m bench --quick              every benchmark at a small size, written to bench/results/quick.md

A benchmark whose module is not there yet is reported as such rather than failing the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Bench:
    """One benchmark: its module (with `main(argv) -> str`), and its arguments at full and at quick size."""

    name: str
    title: str
    module: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


BENCHES = (
    Bench("telegram", "1. Turn overhead through Telegram", "bench.telegram_turn", quick=("--turns", "40")),
    Bench("context", "2. Fixed context, and the agent loop alone", "bench.turn", quick=("--turns", "50")),
    Bench("ledger", "3. Ledger at a year of heavy use", "bench.ledger_year", quick=("--scale", "0.01")),
    Bench("memory", "4. Memory and leaks", "bench.memory",
          quick=("--turns", "600", "--checkpoint", "100", "--bot-turns", "30")),
    Bench("startup", "5. Start-up", "bench.startup", quick=("--starts", "2")),
    Bench("idle", "6. Idle calls, polling vs webhook", "bench.idle", quick=("--window", "5")),
    Bench("budget", "7. Budget precision", "bench.budget_precision", quick=("--runs", "100", "--per-day", "25")),
    Bench("crash", "8. Crashes: SIGKILL and restart", "bench.crash", quick=("--kills", "6")),
    Bench("attacks", "9. Attack success rate, model fully hijacked", "bench.attacks", quick=("--per-class", "3")),
    Bench("streaming", "10. Time to first visible text, streamed", "bench.streaming", quick=("--turns", "2")),
    Bench("mcp", "11. Lean context with 100 MCP tools", "bench.mcp_context"),
    Bench("knowledge", "12. Knowledge retrieval against plain BM25", "bench.knowledge", quick=("--sizes", "1000")),
)


def entry_point(bench: Bench) -> Callable[[list[str]], str] | None:
    """The benchmark's `main`, imported only now (so one benchmark's imports never slow another); None if its
    module does not exist yet."""
    try:
        module = importlib.import_module(bench.module)
    except ModuleNotFoundError as exc:
        if exc.name != bench.module:
            raise  # the module exists but something it imports is missing: a real error
        return None
    main: Callable[[list[str]], str] = module.main
    return main


def run_one(bench: Bench, quick: bool) -> str:
    """One section of the results: title, how to reproduce it, how long it took, its table."""
    args = list(bench.quick if quick else bench.full)
    command = " ".join(["python -m", bench.module, *args])
    main = entry_point(bench)
    if main is None:
        path = bench.module.replace(".", "/") + ".py"
        return f"## {bench.title}\n\nNot run: `{path}` is not there yet."
    print(f"\n## {bench.title}\n`{command}`", flush=True)
    started = time.monotonic()
    body = main(args)
    took = time.monotonic() - started
    return f"## {bench.title}\n\n`{command}` ({took:.0f} s, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)\n\n{body}"


def merged(previous: str, fresh: dict[str, str]) -> list[str]:
    """The sections in benchmark order: fresh ones, else those of the previous results file."""
    kept = {chunk.split("\n", 1)[0]: "## " + chunk.rstrip() for chunk in previous.split("\n## ")[1:]}
    sections = []
    for bench in BENCHES:
        section = fresh.get(bench.title) or kept.get(bench.title)
        if section:
            sections.append(section)
    return sections


def header(quick: bool) -> str:
    """Machine, Python and date: figures from different machines are not comparable."""
    memory = psutil.virtual_memory().total / 1024**3
    size = "quick (small sizes, for a smoke check; not comparable to the targets)" if quick else "full size"
    return (f"# Benchmarks\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · Python {platform.python_version()} · "
            f"{platform.system()} {platform.release()} {platform.machine()} · {os.cpu_count()} CPUs · "
            f"{memory:.1f} GB RAM · {size}\n\nEach figure is compared with a baseline measured in the same "
            "invocation on the same machine.")


def main(argv: list[str] | None = None) -> Path:
    """Run the chosen benchmarks; the results file is rewritten after each, so a failure keeps what was done."""
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(names)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds instead of minutes")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/latest.md, or quick.md)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")
    if args.list:
        print("\n".join(f"{b.name:10} {b.title}" for b in BENCHES))
        raise SystemExit(0)
    out: Path = args.out or RESULTS / ("quick.md" if args.quick else "latest.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text() if args.names and out.exists() else ""
    fresh: dict[str, str] = {}
    for bench in BENCHES:
        if args.names and bench.name not in args.names:
            continue
        fresh[bench.title] = run_one(bench, args.quick)
        out.write_text("\n\n".join([header(args.quick), *merged(previous, fresh)]) + "\n")
    print(f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    main()
