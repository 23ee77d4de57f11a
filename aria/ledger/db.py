"""The SQLite engine: WAL mode, sane pragmas, and write transactions that take the lock up front."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

from aria.ledger.migrations import migrate


def create_ledger_engine(path: Path | str, *, upto: str | None = None) -> Engine:
    """Open (creating if needed) the database at `path`, upgraded to the latest schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's begin event decide how a transaction starts (see _on_begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock at BEGIN, so a read-check-write (a budget reservation) cannot interleave
        # with another process's; readers stay deferred and never block writers in WAL mode.
        immediate = conn.get_execution_options().get("immediate", False)
        # Straight to the driver: every transaction starts here, and a statement through SQLAlchemy costs more than
        # the BEGIN itself. SQLAlchemy still ends the transaction (commit or rollback) through the driver.
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    with engine.connect() as conn, conn.begin():
        migrate(conn, upto=upto)
    return engine
