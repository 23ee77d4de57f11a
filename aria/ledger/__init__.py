"""The ledger: SQLite tables, named migrations and the recording API."""

from aria.ledger.models import (
    COUNTED_MICROS,
    IS_COUNTED,
    MICROS,
    Approval,
    Breaker,
    EvalResult,
    EvalRun,
    Event,
    Failure,
    KeyValue,
    Outbox,
    Reminder,
    Run,
    Spend,
    Step,
    usd_to_micros,
)
from aria.ledger.recorder import Ledger, as_utc

__all__ = [
    "COUNTED_MICROS",
    "IS_COUNTED",
    "MICROS",
    "Approval",
    "Breaker",
    "EvalResult",
    "EvalRun",
    "Event",
    "Failure",
    "KeyValue",
    "Ledger",
    "Outbox",
    "Reminder",
    "Run",
    "Spend",
    "Step",
    "as_utc",
    "usd_to_micros",
]
