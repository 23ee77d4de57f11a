"""`python -m bench`: run every benchmark, print the tables and write them to bench/results/latest.md."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

from bench import turn


def main() -> None:
    """Run the benchmarks in order."""
    sections = [("Turn overhead and fixed context", turn.main([]))]
    header = f"# Benchmarks\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, " \
             f"{platform.machine()}\n"
    body = "\n\n".join(f"## {title}\n\n{table}" for title, table in sections)
    out = Path(__file__).parent / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"{header}\n{body}\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
