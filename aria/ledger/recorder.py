"""The recording API: every run, step, failure, event and flag goes through here."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Insert, Table, Update, bindparam, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, col, select

from aria.clock import Clock, SystemClock
from aria.errors import LedgerUnavailable
from aria.ledger.db import create_ledger_engine
from aria.ledger.models import Event, Failure, Handling, KeyValue, Run, RunStatus, Spend, Step, StepStatus
from aria.ledger.redact import Redactor

log = logging.getLogger(__name__)

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


# SQLite's words for a write that cannot happen until someone frees space or fixes permissions.
_UNWRITABLE = ("disk is full", "readonly", "read-only", "disk i/o error", "unable to open database")


def unwritable_reason(exc: OperationalError | sqlite3.OperationalError) -> str | None:
    """Why a failed statement means the database cannot be written now (None for other operational errors)."""
    original = exc.orig if isinstance(exc, OperationalError) else exc
    message = str(original).lower()
    if "disk is full" in message:
        return "the disk is full"
    if "readonly" in message or "read-only" in message:
        return "the database is read-only"
    if any(words in message for words in _UNWRITABLE):
        return f"the database cannot be written ({original})"
    return None


@dataclass
class WriteHealth:
    """Whether the ledger takes writes; listeners hear each change (down with a reason, or back up)."""

    reason: str | None = None
    since: dt.datetime | None = None
    listeners: list[Callable[[str | None], None]] = field(default_factory=list)

    @property
    def writable(self) -> bool:
        """True while writes succeed."""
        return self.reason is None

    def went_down(self, reason: str, now: dt.datetime) -> None:
        if self.reason is None:
            self.reason, self.since = reason, now
            log.error("the ledger cannot be written: %s; Aria stops acting until it can", reason)
            self._tell(reason)

    def came_back(self) -> None:
        if self.reason is not None:
            self.reason, self.since = None, None
            log.warning("the ledger takes writes again")
            self._tell(None)

    def _tell(self, reason: str | None) -> None:
        for listener in list(self.listeners):
            listener(reason)


def worker_id() -> str:
    """This process, as "pid:start time": a pid alone may be reused by a later process."""
    import psutil  # only when a run starts, not at import

    return f"{os.getpid()}:{psutil.Process().create_time():.2f}"


def worker_alive(worker: str | None) -> bool:
    """True when the process named by `worker` still runs (a pid reused by another process does not count)."""
    if not worker or ":" not in worker:
        return False
    import psutil

    pid, _, started = worker.partition(":")
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (psutil.Error, ValueError):
        return False


def as_utc(when: dt.datetime) -> dt.datetime:
    """A time as aware UTC (naive values are taken to be UTC already)."""
    return when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)


class Ledger:
    """Writes and reads the SQLite ledger; text is redacted before it is stored."""

    def __init__(self, engine: Engine, *, clock: Clock | None = None, redactor: Redactor | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.redact = redactor or Redactor()
        self.health = WriteHealth()
        self.worker = worker_id()

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
            self._watching_writes(),
            self.engine.connect().execution_options(immediate=True) as conn,
            Session(bind=conn) as session,
            conn.begin(),
        ):
            yield session
            session.flush()

    @contextmanager
    def _watching_writes(self) -> Iterator[None]:
        """Turn "disk full" and "read-only" into LedgerUnavailable (and the health going down); a commit that
        succeeds brings it back up."""
        try:
            yield
        # BEGIN IMMEDIATE goes straight to the driver (see db.py), so its refusal arrives unwrapped.
        except (OperationalError, sqlite3.OperationalError) as exc:
            reason = unwritable_reason(exc)
            if reason is None:
                raise
            self.health.went_down(reason, self.now())
            raise LedgerUnavailable(reason) from None
        self.health.came_back()

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
        with self._watching_writes(), self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
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
        key = conn.execute(_insert_into(table), values).inserted_primary_key
        assert key is not None  # a single-row INSERT always has one
        return int(key[0])

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
                                       "started_at": values.get("started_at") or self.now(), "worker": self.worker})

    def finish_run(self, run_id: int, status: RunStatus, *, stop_reason: str | None = None,
                   final_text: str | None = None, answer: str | None = None, route: str | None = None,
                   model: str | None = None, checkpoint: str | None = None,
                   then: Callable[[Connection], object] | None = None) -> None:
        """Close a run with its outcome; totals come from its spend and step rows. `answer` is what later history
        recalls (the model's own words, without Aria's footers). `then` writes more in the same transaction (the
        message that tells the owner), so a run never ends without it."""
        values: dict[str, Any] = {"status": status, "stop_reason": stop_reason, "final_text": self.redact(final_text),
                                  "answer": self.redact(answer),
                                  "ended_at": self.now(), "checkpoint": checkpoint}
        if route:  # an empty route or model keeps what the run already has
            values["route"] = route
        if model:
            values["model"] = model
        with self.write_conn() as conn:
            self.update_row(conn, Run, run_id, values)
            if then is not None:
                then(conn)

    def reopen_run(self, run_id: int) -> None:
        """A run resumed (after an approval, or after a restart) is running again in this process, with no end."""
        with self.write_conn() as conn:
            self.update_row(conn, Run, run_id, {"status": "running", "stop_reason": None, "ended_at": None,
                                                "worker": self.worker})

    def last_cut_run(self, chat_id: int) -> int | None:
        """The chat's latest run, when its answer was cut at the output limit and can still be continued."""
        with self.read_conn() as conn:
            row = conn.execute(select(_RUNS.c.id, _RUNS.c.stop_reason, _RUNS.c.checkpoint)
                               .where(_RUNS.c.chat_id == chat_id, _RUNS.c.trigger != "schedule")
                               .order_by(_RUNS.c.id.desc()).limit(1)).first()
        if row is None or row.stop_reason != "length" or row.checkpoint is None:
            return None
        return int(row.id)

    def claim_continuation(self, run_id: int) -> bool:
        """Take a run whose answer was cut at the output limit, to continue it: True for the one press that may."""
        with self.write_conn() as conn:
            changed = conn.execute(
                _RUNS.update()
                .where(_RUNS.c.id == run_id, _RUNS.c.stop_reason == "length", _RUNS.c.checkpoint.is_not(None),
                       _RUNS.c.status.in_(("ok", "degraded")))
                .values(status="running", stop_reason=None, ended_at=None, worker=self.worker)
            ).rowcount
        return bool(changed)

    def claim_run(self, run_id: int) -> bool:
        """Take a run waiting for its approval (or one this process already holds) to resume it: True for the one
        caller that may; a press and start-up recovery cannot both carry it on."""
        with self.write_conn() as conn:
            changed = conn.execute(
                _RUNS.update()
                .where(_RUNS.c.id == run_id, (_RUNS.c.status == "awaiting_approval")
                       | ((_RUNS.c.status == "running") & (_RUNS.c.worker == self.worker)))
                .values(status="running", stop_reason=None, ended_at=None, worker=self.worker)
            ).rowcount
        return bool(changed)

    def adopt_run(self, run: Run) -> bool:
        """Take over a run a stopped process left behind (compare-and-set on its worker and status)."""
        with self.write_conn() as conn:
            changed = conn.execute(
                _RUNS.update()
                .where(_RUNS.c.id == run.id, _RUNS.c.status == run.status,
                       _RUNS.c.worker.is_(None) if run.worker is None else _RUNS.c.worker == run.worker)
                .values(worker=self.worker)
            ).rowcount
        return bool(changed)

    def model_calls(self, run_id: int) -> int:
        """Model calls a run completed (they count against its step cap when it resumes)."""
        with self.read() as s:
            return len(s.exec(select(Step.id).where(col(Step.run_id) == run_id, col(Step.kind) == "llm",
                                                    col(Step.status) == "ok")).all())

    def take_intake(self, conn: Connection, event_id: int, run_id: int) -> bool:
        """Inside the transaction that opens a run: mark the recorded message it answers processed by it. False when
        another run already took it (compare-and-set on processed_at)."""
        events: Table = Event.__table__  # type: ignore[attr-defined]
        changed = conn.execute(events.update().where(events.c.id == event_id, events.c.processed_at.is_(None))
                               .values(processed_at=self.now(), run_id=run_id)).rowcount
        if changed:
            self._adopt_spend(conn, event_id, run_id)
        return bool(changed)

    @staticmethod
    def _adopt_spend(conn: Connection, event_id: int, run_id: int) -> None:
        """Calls made for the message before its run opened (a voice note's transcription) become the run's: they
        count against its caps and in its totals."""
        spend: Table = Spend.__table__  # type: ignore[attr-defined]
        runs: Table = Run.__table__  # type: ignore[attr-defined]
        adopted = conn.execute(spend.update().where(spend.c.event_id == event_id, spend.c.run_id.is_(None))
                               .values(run_id=run_id).returning(spend.c.status, spend.c.cost_micros)).all()
        cost = sum(micros for status, micros in adopted if status == "settled")
        if cost:
            conn.execute(runs.update().where(runs.c.id == run_id).values(cost_micros=runs.c.cost_micros + cost))

    def save_checkpoint(self, run_id: int, state: str) -> None:
        """The run's state after a completed step, to resume from after a crash."""
        with self.write_conn() as conn:
            self.update_row(conn, Run, run_id, {"checkpoint": state})

    def orphaned_runs(self) -> list[Run]:
        """Runs a process that no longer runs left unfinished: `running` (a crash, a kill) or interrupted while it
        was stopping; oldest first."""
        unfinished = (col(Run.status) == "running") | ((col(Run.status) == "interrupted")
                                                       & (col(Run.stop_reason) == "stopping"))
        with self.read() as s:
            rows = list(s.exec(select(Run).where(unfinished).order_by(col(Run.id))))
        return [row for row in rows if row.worker != self.worker and not worker_alive(row.worker)]

    def close_reservations(self, run_ids: list[int]) -> int:
        """Open reservations of runs whose calls can no longer settle: kept as (estimated) cost, since those calls
        may have been billed. Returns how many were closed."""
        if not run_ids:
            return 0
        with self.write() as s:
            result = s.execute(
                update(Spend).where(col(Spend.status) == "reserved", col(Spend.run_id).in_(run_ids)).values(
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

    def finish_step(self, step_id: int, status: StepStatus, *, latency_ms: int, error_type: str | None,
                    result: str) -> None:
        """A `started` step (a risky tool about to act) gets its outcome."""
        with self.write_conn() as conn:
            self.update_row(conn, Step, step_id, {"status": status, "latency_ms": latency_ms,
                                                  "error_type": error_type,
                                                  "result": (self.redact(result) or "")[:SHORT]})

    def acting_steps(self, run_id: int) -> list[Step]:
        """Steps of a run whose action started and never reported back (it may or may not have happened)."""
        with self.read() as s:
            return list(s.exec(select(Step).where(col(Step.run_id) == run_id, col(Step.status) == "started")))

    def add_failure(self, component: str, error: BaseException | str, handling: Handling, *,
                    run_id: int | None = None, step_id: int | None = None) -> int | None:
        """Record something that went wrong and how it was handled. With the ledger unwritable the failure is only
        logged (None): recording a failure must not become a second failure."""
        error_type = type(error).__name__ if isinstance(error, BaseException) else "Error"
        message = self.redact(str(error)) or error_type
        row = Failure(run_id=run_id, step_id=step_id, component=component, error_type=error_type,
                      message=message[:SHORT], handling=handling, created_at=self.now())
        try:
            with self.write() as s:
                s.add(row)
                s.flush()
                assert row.id is not None
                return row.id
        except LedgerUnavailable:
            log.error("not recorded (ledger unwritable): %s failure, %s: %s", component, error_type, message[:SHORT])
            return None

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

    def record_accepted_event(self, source: str, *, replay_key: str, replay_since: dt.datetime | None,
                              delivery_id: str | None, body_sha256: str, payload: str,
                              event_at: dt.datetime | None) -> int | Literal["replayed", "redelivered"]:
        """Record a verified event unless it is a duplicate, in one write transaction: "replayed" when an event with
        the same replay key was accepted (since `replay_since`, or ever), "redelivered" when its delivery id was."""
        with self.write() as s:
            seen = select(Event.id).where(Event.source == source, Event.replay_key == replay_key,
                                          Event.status == "accepted")
            if replay_since is not None:
                seen = seen.where(Event.received_at >= replay_since)
            if s.exec(seen.limit(1)).first() is not None:
                return "replayed"
            if delivery_id is not None and s.exec(select(Event.id).where(
                    Event.source == source, Event.delivery_id == delivery_id).limit(1)).first() is not None:
                return "redelivered"
            row = Event(source=source, delivery_id=delivery_id, verified=True, status="accepted",
                        body_sha256=body_sha256, received_at=self.now(), payload=self.redact(payload),
                        event_at=event_at, replay_key=replay_key)
            s.add(row)
            s.flush()
            assert row.id is not None
            return row.id

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

    def probe_write(self) -> None:
        """One small write, to learn whether the ledger takes writes again (LedgerUnavailable while it does not)."""
        self.set_flag("ledger-probe", self.now().isoformat())

    # reads ------------------------------------------------------------------------------------------------

    def run(self, run_id: int) -> Run | None:
        """One run by id."""
        with self.read() as s:
            return s.get(Run, run_id)

    def steps(self, run_id: int) -> list[Step]:
        """A run's steps in order."""
        with self.read() as s:
            return list(s.exec(select(Step).where(col(Step.run_id) == run_id).order_by(col(Step.seq), col(Step.id))))
