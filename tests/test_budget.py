"""Reservations are provable upper bounds; caps hold for one run, for a day, and under concurrency."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import ROUND_HALF_UP
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from genai_prices import Usage, calc_price, data_snapshot
from genai_prices.types import TieredPrices
from sqlalchemy import func
from sqlmodel import select

from aria.errors import BudgetExhausted, ConfigError, PriceUnknown
from aria.ledger import Ledger, Run, Spend
from aria.llm.budget import Budget, Caps
from aria.llm.pricing import PriceBook, TokenCounts, flat_rates
from aria.llm.tokens import prompt_upper_bound

UTC = ZoneInfo("UTC")


def _ledger(path: Path) -> Ledger:
    return Ledger.open(path / "aria.db")


def _run(ledger: Ledger) -> int:
    return ledger.start_run(Run(trigger="message", channel="terminal", started_at=ledger.now()))


def test_worst_case_bounds_any_usage_the_reservation_allows() -> None:
    prices = PriceBook(provider_id="openai")
    worst = prices.worst_case_micros("gpt-4o-mini", 2000, 500)
    for prompt, completion, cached in [(2000, 500, 0), (1500, 500, 1000), (10, 1, 0)]:
        assert prices.cost_micros("gpt-4o-mini", TokenCounts(prompt, completion, cached)) <= worst


def test_fit_max_tokens_is_the_largest_that_fits() -> None:
    prices = PriceBook(provider_id="openai")
    budget = 1_000  # $0.001
    fitted = prices.fit_max_tokens("gpt-4o", 100, budget, 10_000)
    assert prices.worst_case_micros("gpt-4o", 100, fitted) <= budget
    assert prices.worst_case_micros("gpt-4o", 100, fitted + 1) > budget


def test_unknown_model_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    budget = Budget(ledger, PriceBook(), day_cap_usd=1.0, tz=UTC)
    with pytest.raises(PriceUnknown, match="ARIA_PRICES_FILE"):
        budget.reserve(_run(ledger), Caps(10_000, 100_000, 5, 60), "my-local-llama", 100, want=100, minimum=10)
    with ledger.read() as s:
        assert s.exec(select(func.count()).select_from(Spend)).one() == 0


def test_override_file_prices_a_local_model(tmp_path: Path) -> None:
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."llama3.1:8b"]\ninput = 1.0\noutput = 2.0\n')
    prices = PriceBook(prices_file)
    assert prices.source("llama3.1:8b") == "override"
    assert prices.cost_micros("llama3.1:8b", TokenCounts(prompt=1_000_000, completion=1_000_000)) == 3_000_000


def test_malformed_override_file_names_the_variable(tmp_path: Path) -> None:
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."x"]\ninput = "free"\n')
    with pytest.raises(ConfigError, match="ARIA_PRICES_FILE"):
        PriceBook(prices_file)


def test_reservation_fits_max_tokens_to_the_run_cap_then_refuses(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    budget = Budget(ledger, PriceBook(provider_id="openai"), day_cap_usd=10.0, tz=UTC)
    run_id = _run(ledger)
    caps = Caps(tokens=1_000_000, micros=2_000, steps=10, seconds=60)  # $0.002
    first = budget.reserve(run_id, caps, "gpt-4o", 200, want=4096, minimum=16)
    assert first.micros <= 2_000 and first.max_tokens < 4096
    budget.settle(first, TokenCounts(prompt=150, completion=first.max_tokens))
    with pytest.raises(BudgetExhausted) as exhausted:
        while True:  # keep spending until the cap refuses; recorded spend must stay under it
            reservation = budget.reserve(run_id, caps, "gpt-4o", 200, want=4096, minimum=16)
            budget.settle(reservation, TokenCounts(prompt=200, completion=reservation.max_tokens))
    assert exhausted.value.cap == "run"
    with ledger.read() as s:
        spent = s.exec(select(func.sum(Spend.cost_micros)).where(Spend.run_id == run_id)).one()
    assert spent <= caps.micros


def test_token_cap_counts_reserved_tokens(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    budget = Budget(ledger, PriceBook(provider_id="openai"), day_cap_usd=10.0, tz=UTC)
    caps = Caps(tokens=1_000, micros=1_000_000, steps=10, seconds=60)
    reservation = budget.reserve(_run(ledger), caps, "gpt-4o-mini", 600, want=1024, minimum=16)
    assert reservation.max_tokens == 400
    with pytest.raises(BudgetExhausted) as exhausted:
        budget.reserve(reservation.run_id, caps, "gpt-4o-mini", 600, want=1024, minimum=16)
    assert exhausted.value.cap == "tokens"


def test_release_frees_the_reservation_and_unknown_billing_keeps_it(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    budget = Budget(ledger, PriceBook(provider_id="openai"), day_cap_usd=10.0, tz=UTC)
    caps = Caps(tokens=100_000, micros=100_000, steps=10, seconds=60)
    run_id = _run(ledger)
    released = budget.reserve(run_id, caps, "gpt-4o-mini", 100, want=100, minimum=10)
    budget.release(released)
    assert budget.day_spent() == 0
    kept = budget.reserve(run_id, caps, "gpt-4o-mini", 100, want=100, minimum=10)
    budget.release(kept, billed_unknown=True)
    assert budget.day_spent() == kept.micros
    with ledger.read() as s:
        row = s.get(Spend, kept.spend_id)
        assert row is not None and row.price_known is False and row.status == "settled"


def test_concurrent_processes_never_pass_the_daily_cap_together(tmp_path: Path) -> None:
    """Eight writers with their own engines (as separate processes would have) race for a small day."""
    day_cap_usd = 0.01
    Ledger.open(tmp_path / "aria.db")  # migrate once
    caps = Caps(tokens=10_000_000, micros=10_000_000, steps=100, seconds=60)
    refused: list[str] = []

    def worker() -> None:
        ledger = Ledger.open(tmp_path / "aria.db")
        budget = Budget(ledger, PriceBook(provider_id="openai"), day_cap_usd=day_cap_usd, tz=UTC)
        run_id = _run(ledger)
        while True:
            try:
                reservation = budget.reserve(run_id, caps, "gpt-4o", 300, want=200, minimum=50)
            except BudgetExhausted as exc:
                refused.append(exc.cap)
                return
            budget.settle(reservation, TokenCounts(prompt=300, completion=reservation.max_tokens))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ledger = _ledger(tmp_path)
    budget = Budget(ledger, PriceBook(provider_id="openai"), day_cap_usd=day_cap_usd, tz=UTC)
    assert refused == ["day"] * 8
    assert 0 < budget.day_spent() <= budget.day_cap


def test_prompt_upper_bound_is_at_least_the_utf8_bytes() -> None:
    messages = [{"role": "user", "content": "héllo wörld " * 50}]
    assert prompt_upper_bound(messages) >= len(("héllo wörld " * 50).encode())


def test_flat_rates_price_every_table_model_exactly_as_the_table_does() -> None:
    now = dt.datetime.now(UTC)
    usages = [TokenCounts(1000, 500), TokenCounts(1439, 1024), TokenCounts(5000, 300, cached=2000), TokenCounts(1)]
    compared = declined = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            rates = flat_rates(model.get_prices(now))
            if rates is None:
                declined += 1
                continue
            for tokens in usages:
                usage = Usage(input_tokens=tokens.prompt, output_tokens=tokens.completion,
                              cache_read_tokens=tokens.cached or None)
                expected = model.calc_price(usage, provider, genai_request_timestamp=now).total_price
                assert rates.dollars(tokens) == expected, (provider.id, model.id, tokens)
                compared += 1
    assert compared > 1000 and declined > 0  # most models are flat; tiered and per-request ones are not


def test_a_tiered_model_is_priced_by_the_table_itself() -> None:
    now = dt.datetime.now(UTC)
    provider, model, tiered = next(
        (provider, model, price) for provider in data_snapshot.get_snapshot().providers for model in provider.models
        if isinstance(price := vars(model.get_prices(now)).get("input_mtok"), TieredPrices)
        and tiered_rate_rises(price))
    prices = PriceBook(provider_id=provider.id)
    above = tiered.tiers[0].start + 1_000  # the cliff: past it, every prompt token pays the tier's rate
    for prompt in (1_000, 1_000, above):  # priced by the table, again after the model is cached, then past the tier
        expected = calc_price(Usage(input_tokens=prompt, output_tokens=100), model.id, provider_id=provider.id)
        assert prices.cost_micros(model.id, TokenCounts(prompt, 100)) == int(
            (expected.total_price * 1_000_000).to_integral_value(ROUND_HALF_UP))
    rate_past_tier = prices.cost_micros(model.id, TokenCounts(above, 0)) / above  # micro-dollars a token = $ / Mtok
    assert rate_past_tier == pytest.approx(float(tiered.tiers[0].price), rel=1e-3)  # the tier's rate, not the base


def tiered_rate_rises(price: TieredPrices) -> bool:
    return bool(price.tiers) and price.tiers[0].price > price.base
