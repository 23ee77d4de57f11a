"""The year-of-history benchmark runs end to end at a tiny scale and prints every figure (timings not asserted)."""

from __future__ import annotations

import pytest

from bench import ledger_year


def test_ledger_year_benchmark_prints_its_table_at_small_scale(capsys: pytest.CaptureFixture[str]) -> None:
    result = ledger_year.main(["--scale", "0.001"])

    rows = dict(line.strip("| ").split(" | ", 1) for line in result.splitlines()[2:])
    assert rows["scale"] == "0.001"
    assert rows["rows"] == "run 300, step 2,000, spend 500, failure 30"
    assert rows["database size"].endswith(" MB")
    for figure in ("write one run + 5 steps, median", "write one run + 5 steps, p99",
                   "digest queries (one day), median", "digest queries, light year (baseline)",
                   "digest with both charts, median", "digest with both charts, light year (baseline)",
                   "first digest of the process (imports matplotlib)", "/cost 7 days (figures + chart), median",
                   "/cost 90 days (figures + chart), median"):
        assert rows[figure].endswith(" ms"), figure
    assert rows["digest with charts ≤ 1 s"] in ("met", "missed")
    assert result in capsys.readouterr().out
