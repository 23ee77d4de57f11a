"""The recording API: every run, step, failure, event and flag goes through here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, Update, bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from aria.clock import Clock, SystemClock
from aria.ledger.db import create_ledger_engine
from aria.ledger.models import Event, Failure, KeyValue, Run, Spend, Step
from aria.ledger.redact import Redactor

SHORT = 500  # characters of a tool result kept on a step row
_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
# Built once, with bound parameters: constructing a statement costs several times what SQLite takes to run it.
_COUNT_STEP = _RUNS.update().where(_RUNS.c.id == bindparam("row_id")).values(steps=_RUNS.c.steps + 1)


@cache
def _insert_into(table: Table) -> Insert:
    return table.insert()


@cache
def _update_by_id(table: Table) -> Update:
    # No .values(): the SET clause is made from the keys passed with each execution.
    return table.update().where(table.c.id == bindparam("row_id"))


def column_values(row: SQLModel) -> dict[str, Any]:
    """A table model's row as column values, an unset id left out (for SQLite to assign)."""
    table: Table = row.__table__  # type: ignore[attr-defined]
    values = {column.key: getattr(row, column.key) for column in table.columns}
    if values.get("id") is None:
        values.pop("id", None)
    return values


def as_utc(when: dt.datetime) -> dt.datetime:
    """A time as aware UTC (naive values are taken to be UTC already)."""
    return when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)


class Ledger:
    """Writes and reads the SQLite ledger; text is redacted before it is stored."""

    def __init__(self, engine: Engine, *, clock: Clock | None = None, redactor: Redactor | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.redact = redactor or Redactor()

    @classmethod
    def open(cls, path: Path | str, **kwargs: object) -> Ledger:
        """Open the database at `path`, migrating it to the latest schema."""
        return cls(create_ledger_engine(path), **kwargs)  # type: ignore[arg-type]

    def now(self) -> dt.datetime:
        """Current time, aware UTC."""
        return as_utc(self.clock.now())

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        with (
            self.engine.connect().execution_options(immediate=True) as conn,
            Session(bind=conn) as session,
            conn.begin(),
        ):
            yield session
            session.flush()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session."""
        with Session(self.engine) as session:
            yield session

    # The hot path of every turn (run, step, reservation, settlement) writes through these Core-level twins of
    # write() and read(): the ORM's unit of work costs more than the SQLite statements it issues.

    @contextmanager
    def write_conn(self) -> Iterator[Connection]:
        """Like write(), at the Core level: a transaction holding SQLite's write lock from its first statement."""
        with self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read_conn(self) -> Iterator[Connection]:
        """Like read(), at the Core level."""
        with self.engine.connect() as conn:
            yield conn

    @staticmethod
    def insert(conn: Connection, model: type[SQLModel], values: dict[str, Any]) -> int:
        """Insert one row from column values, the table's defaults filling the rest; returns its id. The hot path
        inserts this way: building a table model instance costs more than the INSERT."""
        table: Table = model.__table__  # type: ignore[attr-defined]
        return int(conn.execute(_insert_into(table), values).inserted_primary_key[0])

    @staticmethod
    def update_row(conn: Connection, model: type[SQLModel], row_id: int, values: dict[str, Any]) -> int:
        """Set columns of one row, by id; returns how many rows changed (0 or 1)."""
        table: Table = model.__table__  # type: ignore[attr-defined]
        return int(conn.execute(_update_by_id(table), {"row_id": row_id, **values}).rowcount)

    # runs -------------------------------------------------------------------------------------------------

    def start_run(self, run: Run) -> int:
        """Insert a run in state `running`; sets its id and returns it."""
        with self.write_conn() as conn:
            run.id = self.record_run(conn, column_values(run))
        return run.id

    def record_run(self, conn: Connection, values: dict[str, Any]) -> int:
        """Insert a run in state `running` from column values, inside a caller's write transaction; returns its
        id. The request is redacted; `started_at` defaults to now."""
        return self.insert(conn, Run, {**values, "request": self.redact(values.get("request")) or "",
                                       "started_at": values.get("started_at") or self.now()})

    def finish_run(self, run_id: int, status: str, *, stop_reason: str | None = None, final_text: str | None = None,
                   route: str | None = None, model: str | None = None) -> None:
        """Close a run with its outcome; totals come from its spend and step rows."""
        values: dict[str, Any] = {"status": status, "stop_reason": stop_reason, "final_text": self.redact(final_text),
                                  "ended_at": self.now()}
        if route:  # an empty route or model keeps what the run already has
            values["route"] = route
        if model:
            values["model"] = model
        with self.write_conn() as conn:
            self.update_row(conn, Run, run_id, values)

    def reopen_run(self, run_id: int) -> None:
        """A run resumed after an approval is running again, with no end yet."""
        with self.write_conn() as conn:
            self.update_row(conn, Run, run_id, {"status": "running", "stop_reason": None, "ended_at": None})

    def mark_interrupted(self) -> int:
        """At start-up: runs a previous process left `running` are marked `interrupted`, and their open
        reservations are kept as (estimated) cost, since those calls may have been billed."""
        with self.write() as s:
            result = s.execute(
                update(Run).where(Run.status == "running").values(
                    status="interrupted", stop_reason="process stopped", ended_at=self.now()
                )
            )
            stale = select(Run.id).where(Run.status == "interrupted")
            s.execute(
                update(Spend).where(col(Spend.status) == "reserved", col(Spend.run_id).in_(stale)).values(
                    status="settled", cost_micros=Spend.reserved_micros, price_known=False, settled_at=self.now()
                )
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # steps and failures -----------------------------------------------------------------------------------

    def add_step(self, step: Step) -> int:
        """Record one step; arguments and result are redacted and trimmed."""
        with self.write_conn() as conn:
            step.id = self.insert_step(conn, column_values(step))
            conn.execute(_COUNT_STEP, {"row_id": step.run_id})
        return step.id

    def insert_step(self, conn: Connection, values: dict[str, Any]) -> int:
        """Insert a step from column values inside a caller's write transaction (so it commits with what it
        describes); arguments and result are redacted and trimmed. The caller counts it on its run."""
        result = values.get("result")
        return self.insert(conn, Step, {
            **values, "args": self.redact(values.get("args")),
            "result": (self.redact(result) or "")[:SHORT] if result is not None else None,
            "started_at": values.get("started_at") or self.now(),
        })

    def add_failure(self, component: str, error: BaseException | str, handling: str, *,
                    run_id: int | None = None, step_id: int | None = None) -> int:
        """Record something that went wrong and how it was handled."""
        error_type = type(error).__name__ if isinstance(error, BaseException) else "Error"
        message = self.redact(str(error)) or error_type
        row = Failure(run_id=run_id, step_id=step_id, component=component, error_type=error_type,
                      message=message[:SHORT], handling=handling, created_at=self.now())
        with self.write() as s:
            s.add(row)
            s.flush()
            assert row.id is not None
            return row.id

    # events -----------------------------------------------------------------------------------------------

    def record_event(self, source: str, *, status: str, verified: bool, delivery_id: str | None = None,
                     reason: str | None = None, user_id: int | None = None, body_sha256: str | None = None,
                     run_id: int | None = None, payload: str | None = None,
                     event_at: dt.datetime | None = None) -> int | None:
        """Record an inbound call (with its redacted payload, in the same transaction); returns None when
        (source, delivery_id) was already recorded."""
        row = Event(source=source, delivery_id=delivery_id, verified=verified, status=status, reason=reason,
                    user_id=user_id, body_sha256=body_sha256, run_id=run_id, received_at=self.now(),
                    payload=self.redact(payload), event_at=event_at)
        try:
            with self.write() as s:
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:
            return None

    # flags ------------------------------------------------------------------------------------------------

    def get_flag(self, key: str) -> str | None:
        """A durable flag's value, or None."""
        with self.read() as s:
            row = s.get(KeyValue, key)
            return row.value if row else None

    def get_flags(self, keys: list[str]) -> dict[str, str]:
        """The flags among `keys` that are set, in one read."""
        with self.read() as s:
            return {row.key: row.value for row in s.exec(select(KeyValue).where(col(KeyValue.key).in_(keys)))}

    def set_flag(self, key: str, value: str) -> None:
        """Set a durable flag."""
        with self.write() as s:
            row = s.get(KeyValue, key) or KeyValue(key=key, value=value, updated_at=self.now())
            row.value, row.updated_at = value, self.now()
            s.add(row)

    def claim_flag(self, key: str, value: str) -> bool:
        """Set a flag only if it is unset: True for the one caller that won (send-once guards)."""
        with self.write() as s:
            if s.get(KeyValue, key) is not None:
                return False
            s.add(KeyValue(key=key, value=value, updated_at=self.now()))
            return True

    # reads ------------------------------------------------------------------------------------------------

    def run(self, run_id: int) -> Run | None:
        """One run by id."""
        with self.read() as s:
            return s.get(Run, run_id)

    def steps(self, run_id: int) -> list[Step]:
        """A run's steps in order."""
        with self.read() as s:
            return list(s.exec(select(Step).where(Step.run_id == run_id).order_by(Step.seq, Step.id)))
