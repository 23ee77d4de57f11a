"""Caps that are never overshot: reserve the worst case before a call, settle to the reported usage after.

A reservation is a `spend` row in status `reserved` holding the worst case of the call (prompt upper bound at the
input rate plus max_tokens at the output rate). The check of what is left and the insert of the reservation run in
one IMMEDIATE transaction, so concurrent runs (tasks or processes) cannot pass a cap together. Settling replaces the
reservation with the priced usage, which can only be smaller; a failed call releases it, and a call whose billing
is unknowable (a timeout after the request was sent) keeps it as an estimated cost.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam, case, func
from sqlmodel import col, select

from aria.errors import BudgetExhausted, LedgerUnavailable
from aria.ledger import COUNTED_MICROS, Ledger, Run, Spend, usd_to_micros
from aria.llm.pricing import PriceBook, TokenCounts
from aria.overrides import Overrides

if TYPE_CHECKING:
    from aria.config import Settings

_TOKENS = case((col(Spend.status) == "reserved", col(Spend.reserved_tokens)),
               (col(Spend.status) == "settled", col(Spend.prompt_tokens) + col(Spend.completion_tokens)), else_=0)
# Built once, with bound parameters: every reservation runs the sums, every settlement the run's totals, and
# constructing a statement costs several times what SQLite takes to run it.
_RUNS = Run.__table__  # type: ignore[attr-defined]
_ADD_TO_RUN = _RUNS.update().where(_RUNS.c.id == bindparam("row_id")).values(
    steps=_RUNS.c.steps + bindparam("add_steps"), prompt_tokens=_RUNS.c.prompt_tokens + bindparam("add_prompt"),
    completion_tokens=_RUNS.c.completion_tokens + bindparam("add_completion"),
    cost_micros=_RUNS.c.cost_micros + bindparam("add_cost"), model=bindparam("last_model"),
)
_RUN_MICROS = select(func.coalesce(func.sum(COUNTED_MICROS), 0)).where(col(Spend.run_id) == bindparam("run_id"))
_RUN_TOKENS = select(func.coalesce(func.sum(_TOKENS), 0)).where(col(Spend.run_id) == bindparam("run_id"))
DAY_TOTAL = select(func.coalesce(func.sum(COUNTED_MICROS), 0)).where(col(Spend.day) == bindparam("day"))
# What is left, in one statement: the run's money and tokens, and the day's money.
_SPENT = select(_RUN_MICROS.scalar_subquery(), _RUN_TOKENS.scalar_subquery(), DAY_TOTAL.scalar_subquery())


ALERT_SHARE = 80  # percent of the day's cap: the reservation that crosses it raises the 80 % alert


@dataclass(frozen=True)
class Caps:
    """Per-run limits."""

    tokens: int
    micros: int
    steps: int
    seconds: float


@dataclass(frozen=True)
class Reservation:
    """A reserved worst case for one call."""

    spend_id: int
    run_id: int
    model: str
    prompt_upper: int
    max_tokens: int
    micros: int


@dataclass(frozen=True)
class Remaining:
    """What is left for a run right now."""

    run_micros: int
    day_micros: int
    tokens: int
    day_cap: int = 0

    @property
    def micros(self) -> int:
        """The binding dollar limit."""
        return min(self.run_micros, self.day_micros)


class Budget:
    """Reserves and settles spend against the run's caps and the owner's daily cap."""

    def __init__(self, ledger: Ledger, prices: PriceBook, *, day_cap_usd: float, tz: ZoneInfo,
                 provider: str = "openai") -> None:
        self.ledger = ledger
        self.prices = prices
        self.base_day_cap = usd_to_micros(day_cap_usd)  # the setting; the owner's override and raises go above it
        self.overrides = Overrides(ledger)
        self.tz = tz
        self.provider = provider
        # Called with (day, threshold) when a reservation takes the day past a share of its cap (80) or a call is
        # refused by the day's cap (100): the alerts fire on what was reserved or refused, not only on settled spend.
        self.on_threshold: list[Callable[[str, int], None]] = []

    @property
    def day_cap(self) -> int:
        """Today's cap in micro-dollars (the owner's override and today's raise included)."""
        return self.day_cap_on(self.today())

    def raise_for(self, request_micros: int) -> int:
        """What "raise today's cap" adds: room for one whole request, over whatever today already went past the
        cap (a cap lowered below the day's spend)."""
        today = self.today()
        return max(0, self.day_spent(today) - self.day_cap_on(today)) + request_micros

    def day_cap_on(self, day: str) -> int:
        """The cap of a local day in micro-dollars."""
        with self.ledger.read_conn() as conn:
            return self.overrides.day_cap(conn, self.base_day_cap, day)

    def today(self) -> str:
        """The owner's local date, the key a day's spend is counted under."""
        return self.ledger.clock.now().astimezone(self.tz).date().isoformat()

    def day_spent(self, day: str | None = None) -> int:
        """Micro-dollars counted against a day (reservations included)."""
        with self.ledger.read_conn() as conn:
            return self.spent_on(conn, day or self.today())

    @staticmethod
    def spent_on(conn: Connection, day: str) -> int:
        """day_spent, read in the caller's transaction."""
        return int(conn.execute(DAY_TOTAL, {"day": day}).scalar_one())

    def _remaining(self, conn: Connection, run_id: int, caps: Caps, day: str) -> Remaining:
        """What this run may still spend, in dollars and tokens."""
        run_micros, run_tokens, day_micros = conn.execute(_SPENT, {"run_id": run_id, "day": day}).one()
        day_cap = self.overrides.day_cap(conn, self.base_day_cap, day)
        return Remaining(run_micros=caps.micros - int(run_micros), day_micros=day_cap - int(day_micros),
                         tokens=caps.tokens - int(run_tokens), day_cap=day_cap)

    def reserve(self, run_id: int, caps: Caps, model: str, prompt_upper: int, *, want: int,
                minimum: int) -> Reservation:
        """Reserve the worst case of one call, with max_tokens fitted to what is left (at most `want`).

        Raises BudgetExhausted when fewer than `minimum` output tokens would fit, and PriceUnknown for an
        unpriced model (before anything is written).
        """
        source = self.prices.source(model)
        day = self.today()
        try:
            return self._reserve(run_id, caps, model, prompt_upper, want=want, minimum=minimum, day=day,
                                 source=source)
        except BudgetExhausted as exc:
            if exc.cap == "day":
                self._crossed(day, 100)  # refused by the day's cap: the day is used up, whatever share it shows
            raise

    def _reserve(self, run_id: int, caps: Caps, model: str, prompt_upper: int, *, want: int, minimum: int,
                 day: str, source: str) -> Reservation:
        # The check of what is left and the insert of the reservation share one IMMEDIATE transaction.
        with self.ledger.write_conn() as conn:
            left = self._remaining(conn, run_id, caps, day)
            by_tokens = left.tokens - prompt_upper
            by_money, fitted_micros = self.prices.fit(model, prompt_upper, left.micros, max(0, min(want, by_tokens)))
            max_tokens = min(want, by_tokens, by_money)
            if max_tokens < minimum:
                binding = "day" if left.day_micros <= left.run_micros else "run"
                if by_tokens < minimum:
                    binding = "tokens"
                raise BudgetExhausted(binding, _explain(binding, left, prompt_upper, minimum))
            micros = fitted_micros if max_tokens == by_money else self.prices.worst_case_micros(
                model, prompt_upper, max_tokens)
            spend_id = self.ledger.insert(conn, Spend, {
                "run_id": run_id, "provider": self.provider, "model": model, "status": "reserved",
                "reserved_tokens": prompt_upper + max_tokens, "reserved_micros": micros, "price_source": source,
                "day": day, "created_at": self.ledger.now()})
        used = left.day_cap - left.day_micros
        if left.day_cap and used * 100 < left.day_cap * ALERT_SHARE <= (used + micros) * 100:
            self._crossed(day, ALERT_SHARE)
        return Reservation(spend_id, run_id, model, prompt_upper, max_tokens, micros)

    def _crossed(self, day: str, threshold: int) -> None:
        for listener in self.on_threshold:
            # Best effort: the reservation (or the refusal) stands whether or not the alert's mark could be written.
            with contextlib.suppress(LedgerUnavailable):
                listener(day, threshold)

    def settle(self, reservation: Reservation, tokens: TokenCounts, *, step_id: int | None = None,
               raw_usage: dict[str, object] | None = None, step: dict[str, Any] | None = None,
               estimated: bool = False) -> int:
        """Replace a reservation with the priced usage; returns the cost in micro-dollars. A `step` (column values)
        describing the call is recorded in the same transaction (one commit per call instead of two). `estimated`
        marks tokens Aria counted itself rather than the provider's usage."""
        cost = self.prices.cost_micros(reservation.model, tokens)
        settled = {
            "status": "settled", "step_id": step_id, "cost_micros": cost, "prompt_tokens": tokens.prompt,
            "completion_tokens": tokens.completion, "cached_tokens": tokens.cached,
            "reasoning_tokens": tokens.reasoning, "settled_at": self.ledger.now(), "price_known": not estimated,
            "usage_json": json.dumps(raw_usage, default=str) if raw_usage is not None else None,
        }
        with self.ledger.write_conn() as conn:
            if step is not None:
                settled["step_id"] = self.ledger.insert_step(conn, step)
            found = self.ledger.update_row(conn, Spend, reservation.spend_id, settled)
            assert found == 1, f"no reservation {reservation.spend_id}"  # raised inside: the transaction rolls back
            conn.execute(_ADD_TO_RUN, {"row_id": reservation.run_id, "add_steps": int(step is not None),
                                       "add_prompt": tokens.prompt,
                                       "add_completion": tokens.completion, "add_cost": cost,
                                       "last_model": reservation.model})
        return cost

    def settle_cut(self, reservation: Reservation, received_tokens: int, *, why: str, step_id: int | None = None,
                   step: dict[str, Any] | None = None) -> int:
        """Settle a call whose usage is unknown but whose output stopped (closed, cut, or unreported): the bound of
        the prompt that was sent plus the tokens that arrived, marked as an estimate. Returns the cost."""
        tokens = TokenCounts(prompt=reservation.prompt_upper, completion=min(received_tokens, reservation.max_tokens))
        return self.settle(reservation, tokens, step_id=step_id, step=step, estimated=True,
                           raw_usage={"estimated": "prompt bound + tokens received", "why": why[:200]})

    def release(self, reservation: Reservation, *, billed_unknown: bool = False, step_id: int | None = None) -> None:
        """A call failed: nothing was billed (release), or billing is unknown (keep the worst case as cost)."""
        with self.ledger.write() as s:
            row = s.get(Spend, reservation.spend_id)
            assert row is not None
            row.step_id = step_id
            row.settled_at = self.ledger.now()
            if billed_unknown:
                row.status, row.cost_micros, row.price_known = "settled", reservation.micros, False
                row.prompt_tokens, row.completion_tokens = reservation.prompt_upper, reservation.max_tokens
                run = s.get(Run, reservation.run_id)
                if run is not None:
                    run.cost_micros += reservation.micros
                    s.add(run)
            else:
                row.status = "released"
            s.add(row)


def _explain(binding: str, left: Remaining, prompt_upper: int, minimum: int) -> str:
    usd = left.micros / 1_000_000
    if binding == "tokens":
        return f"{max(left.tokens, 0)} tokens left, a call needs {prompt_upper + minimum}"
    scope = "today's budget" if binding == "day" else "this request's budget"
    return f"${max(usd, 0):.4f} left of {scope}, not enough for a useful answer"


def caps_from_settings(settings: Settings, overrides: Overrides | None = None,
                       conn: Connection | None = None) -> Caps:
    """The per-run caps configured in settings, with the owner's per-request dollar cap above them."""
    micros = usd_to_micros(settings.run_max_usd)
    if overrides is not None:
        micros = overrides.request_cap(micros, conn)
    return Caps(tokens=settings.run_max_tokens, micros=micros, steps=settings.run_max_steps,
                seconds=settings.run_max_seconds)
