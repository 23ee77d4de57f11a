"""Every benchmark still runs, at a tiny size. Nothing here looks at speed or memory: machines are noisy.

The ledger-at-a-year benchmark has its own smoke test (tests/test_bench_ledger.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as runner
from bench import (
    budget_precision,
    idle,
    knowledge,
    mcp_context,
    memory,
    startup,
    streaming,
    telegram_turn,
    turn,
)


def test_telegram_turn_times_the_floor_and_both_ways_of_chatting_with_aria() -> None:
    report = telegram_turn.main(["--turns", "4"])
    assert "| floor (PTB + openai, nothing else) |" in report
    assert "| Aria, one chat (with history) |" in report
    assert "| Aria, a new chat each turn |" in report


def test_streaming_times_first_visible_text_against_the_non_streamed_answer() -> None:
    report = streaming.main(["--turns", "1", "--delay", "0.005"])
    assert "| sendMessageDraft |" in report and "| edits of one message (no drafts) |" in report
    assert "non-streamed time to answer (baseline)" in report


def test_fixed_context_reports_the_hello_prompt_and_the_loop_against_a_bare_call() -> None:
    report = turn.main(["--turns", "3"])
    assert "prompt tokens for 'hello'" in report
    assert "prompt tokens for a one-tool request" in report
    assert "one bare openai call" in report


def test_mcp_context_reports_hello_and_a_one_tool_request_with_100_mcp_tools() -> None:
    report = mcp_context.main([])
    assert "| MCP tools installed | 100 (one stdio server) |" in report
    assert "prompt tokens for 'hello'" in report and "prompt tokens for a one-tool request" in report


def test_memory_reads_the_floor_and_both_aria_processes_at_every_checkpoint() -> None:
    report = memory.main(["--turns", "20", "--checkpoint", "10", "--bot-turns", "2"])
    assert "| floor (PTB + openai) RSS after its first answer |" in report
    assert "| floor RSS after 2 Telegram turns |" in report
    assert "`aria run` RSS after its first answer" in report
    assert "`aria run` RSS after 2 Telegram turns" in report
    assert report.count("x the floor; target ≤ 1.25x") == 2
    assert "`aria chat` RSS after 10 turns" in report
    assert "`aria chat` RSS after 20 turns" in report
    assert "growth after warm-up" in report


def test_startup_times_aria_run_to_its_first_answer_and_lists_deferred_imports() -> None:
    report = startup.main(["--starts", "2"])
    assert "`aria run` to first answer, new database" in report
    assert "heavy imports deferred" in report
    assert "matplotlib" in report


def test_budget_precision_never_overshoots_and_the_baseline_is_computed() -> None:
    report = budget_precision.main(["--runs", "12", "--per-day", "6"])
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    # The one figure the benchmark exists to show is a guarantee, not a speed: it is checked.
    assert "$0.000000 (0% of the cap), 0 over |" in rows["largest overshoot of a run's cap"]
    assert "$0.000000 (0% of the cap), 0 over |" in rows["largest overshoot of a day's cap"]
    assert "baseline: check after each call" in report


def test_idle_counts_calls_in_both_modes_and_for_the_naive_poller() -> None:
    report = idle.main(["--window", "1.5"])
    assert "Aria, webhook: Bot API calls per 10 min / per hour | 0 / 0 |" in report
    assert "| Aria, model calls while idle (polling / webhook) | 0 / 0 |" in report
    assert "baseline, naive 1 s poller" in report


def test_knowledge_reports_every_figure_beside_plain_bm25() -> None:
    report = knowledge.main(["--sizes", "300"])
    for figure in ("recall@5 (all", "failures (held out)", "nDCG@10", "stale-fact rate", "unanswerable declined",
                   "notes sent per answered question", "dump-everything baseline"):
        assert figure in report
    assert "| figure | Aria | Aria, static model only | Aria, words only | plain BM25 | target |" in report
    assert "blended with all-MiniLM-L6-v2" in report and "loaded in" in report  # both models, from their wheels
    assert "| 300 |" in report and "Aria, words only, p50 / p95" in report and "plain BM25 p50 / p95" in report


def test_runner_writes_the_chosen_sections_with_machine_and_date(tmp_path: Path) -> None:
    out = runner.main(["context", "--quick", "--out", str(tmp_path / "results.md")])
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "Python 3." in text and "CPUs" in text
    assert "## 2. Fixed context" in text
    assert "## 1. Turn overhead" not in text


def test_runner_reports_a_benchmark_whose_module_is_missing() -> None:
    missing = runner.Bench("later", "9. Later", "bench.not_written_yet")
    assert runner.run_one(missing, quick=True) == "## 9. Later\n\nNot run: `bench/not_written_yet.py` is not there yet."


def test_runner_refuses_unknown_names() -> None:
    with pytest.raises(SystemExit):
        runner.main(["nonsense"])


def test_runner_keeps_the_sections_it_did_not_run() -> None:
    previous = "# Benchmarks\n\nold header\n\n## 2. Fixed context, and the agent loop alone\n\nold context\n\n" \
               "## 7. Budget precision\n\nold budget\n"
    sections = runner.merged(previous, {"7. Budget precision": "## 7. Budget precision\n\nnew budget"})
    assert sections == ["## 2. Fixed context, and the agent loop alone\n\nold context",
                        "## 7. Budget precision\n\nnew budget"]
