"""The one retry policy: which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import datetime as dt
import email.utils
import random

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Wait before attempt `attempt + 1`: max(Retry-After, full-jitter exponential backoff)."""
    exponential = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return max(retry_after or 0.0, random.uniform(exponential / 2, exponential))
