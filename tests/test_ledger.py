"""The ledger: WAL mode, named migrations that upgrade an older database without loss, models matching the schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlmodel import select

from aria.agent.history import LATEST_EXCHANGES
from aria.ledger import Ledger, Run, Step
from aria.ledger.db import create_ledger_engine
from aria.ledger.migrations import MIGRATIONS
from aria.ledger.models import SQLModel
from aria.ledger.redact import Redactor
from aria.llm.budget import DAY_TOTAL


def test_database_is_in_wal_mode_and_records_its_migrations(tmp_path: Path) -> None:
    Ledger.open(tmp_path / "aria.db")
    conn = sqlite3.connect(tmp_path / "aria.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    names = [row[0] for row in conn.execute("SELECT name FROM migration ORDER BY rowid")]
    assert names == [m.__name__ for m in MIGRATIONS]


def test_older_database_upgrades_in_place_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "aria.db"
    create_ledger_engine(path, upto="m001_initial").dispose()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO run (id, \"trigger\", channel, request, status, cap_tokens, cap_micros, cap_steps, cap_seconds, "
        "prompt_tokens, completion_tokens, cost_micros, steps, started_at) "
        "VALUES (7, 'message', 'telegram', 'old question', 'ok', 1, 1, 1, 1.0, 10, 5, 42, 1, '2025-01-01 10:00:00')"
    )
    conn.commit()
    tables_before = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "reminder" not in tables_before and "breaker" not in tables_before

    ledger = Ledger.open(path)
    run = ledger.run(7)
    assert run is not None and run.request == "old question" and run.cost_micros == 42
    tables_after = set(inspect(ledger.engine).get_table_names())
    assert {"reminder", "breaker", "keyvalue"} <= tables_after
    ledger.set_flag("paused", "no")  # a table added by a later migration works
    assert ledger.get_flag("paused") == "no"
    # Opening again applies nothing twice.
    Ledger.open(path)
    applied = sqlite3.connect(path).execute("SELECT count(*) FROM migration").fetchone()[0]
    assert applied == len(MIGRATIONS)


def test_models_match_the_migrated_schema(tmp_path: Path) -> None:
    engine = create_ledger_engine(tmp_path / "aria.db")
    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    SQLModel.metadata.create_all(fresh)  # the models alone describe the same tables
    assert set(inspect(fresh).get_table_names()) <= set(inspector.get_table_names())


def test_step_text_is_redacted_and_trimmed(tmp_path: Path) -> None:
    ledger = Ledger(create_ledger_engine(tmp_path / "aria.db"), redactor=Redactor(["hunter2-secret"]))
    run_id = ledger.start_run(Run(trigger="message", channel="terminal", request="pw hunter2-secret",
                                  started_at=ledger.now()))
    ledger.add_step(Step(run_id=run_id, kind="tool", name="x", status="ok", started_at=ledger.now(),
                         args='{"token": "123456789:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', result="y" * 5000))
    run = ledger.run(run_id)
    (step,) = ledger.steps(run_id)
    assert run is not None and "hunter2" not in run.request
    assert "AAAAAAAA" not in (step.args or "") and len(step.result or "") <= 500
    assert run.steps == 1


def test_runs_of_a_dead_process_are_orphans_and_live_ones_are_not(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "aria.db")
    live = ledger.start_run(Run(trigger="message", channel="telegram", started_at=ledger.now()))
    dead = ledger.start_run(Run(trigger="message", channel="telegram", started_at=ledger.now()))
    with ledger.write_conn() as conn:
        ledger.update_row(conn, Run, dead, {"worker": "999999999:1.00"})  # no such process
    later = Ledger.open(tmp_path / "aria.db")  # the same process: its own live run is not an orphan
    later.worker = "another-process"
    assert [run.id for run in later.orphaned_runs()] == [dead]
    assert later.adopt_run(later.run(dead) or Run(trigger="", channel="", started_at=ledger.now()))
    assert live != dead


def test_reservations_of_dead_runs_are_closed_as_estimated_cost(tmp_path: Path) -> None:
    from aria.ledger import Spend

    ledger = Ledger.open(tmp_path / "aria.db")
    run_id = ledger.start_run(Run(trigger="message", channel="telegram", started_at=ledger.now()))
    with ledger.write() as s:
        s.add(Spend(run_id=run_id, provider="openai", model="gpt-4o", status="reserved", reserved_micros=900,
                    day="2026-01-01", created_at=ledger.now()))
    assert Ledger.open(tmp_path / "aria.db").close_reservations([run_id]) == 1
    with ledger.read() as s:
        spend = s.exec(select(Spend)).one()
    assert (spend.status, spend.cost_micros, spend.price_known) == ("settled", 900, False)


def test_the_reads_of_every_turn_are_served_by_indexes(tmp_path: Path) -> None:
    # A year of runs must not make a turn slower: the history and the day's spend are index look-ups, not scans.
    engine = create_ledger_engine(tmp_path / "aria.db")
    statements = {"ix_run_chat": LATEST_EXCHANGES.params(chat_id=5, before=2**62, after=0),
                  "ix_spend_day_counted": DAY_TOTAL.params(day="x")}
    with engine.connect() as conn:
        for index, statement in statements.items():
            sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = " | ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # no sort: the index gives the order
