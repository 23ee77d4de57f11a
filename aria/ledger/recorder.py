"""The recording API: every run, step, failure, event and flag goes through here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from aria.clock import Clock, SystemClock
from aria.ledger.db import create_ledger_engine
from aria.ledger.models import Event, Failure, KeyValue, Run, Spend, Step
from aria.ledger.redact import Redactor

SHORT = 500  # characters of a tool result kept on a step row


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

    # runs -------------------------------------------------------------------------------------------------

    def start_run(self, run: Run) -> int:
        """Insert a run in state `running`; returns its id."""
        run.request = self.redact(run.request) or ""
        run.started_at = run.started_at or self.now()
        with self.write() as s:
            s.add(run)
            s.flush()
            assert run.id is not None
            return run.id

    def finish_run(self, run_id: int, status: str, *, stop_reason: str | None = None, final_text: str | None = None,
                   route: str | None = None, model: str | None = None) -> None:
        """Close a run with its outcome; totals come from its spend and step rows."""
        with self.write() as s:
            run = s.get(Run, run_id)
            if run is None:
                return
            run.status, run.stop_reason = status, stop_reason
            run.final_text = self.redact(final_text)
            run.route = route or run.route
            run.model = model or run.model
            run.ended_at = self.now()
            s.add(run)

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
        step.args = self.redact(step.args)
        step.result = (self.redact(step.result) or "")[:SHORT] if step.result is not None else None
        step.started_at = step.started_at or self.now()
        with self.write() as s:
            s.add(step)
            s.execute(update(Run).where(Run.id == step.run_id).values(steps=Run.steps + 1))
            s.flush()
            assert step.id is not None
            return step.id

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
                     run_id: int | None = None) -> int | None:
        """Record an inbound call; returns None when (source, delivery_id) was already recorded."""
        row = Event(source=source, delivery_id=delivery_id, verified=verified, status=status, reason=reason,
                    user_id=user_id, body_sha256=body_sha256, run_id=run_id, received_at=self.now())
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
