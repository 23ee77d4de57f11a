"""Prices per model, from the maintained genai-prices table with a local override file.

An unknown model fails closed (PriceUnknown): a dollar cap that cannot be priced is no cap. The override file
(TOML, ARIA_PRICES_FILE) sets or corrects prices in dollars per million tokens:

    [models."llama3.1:8b"]
    input = 0.0
    output = 0.0
    cached_input = 0.0   # optional, defaults to input
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import tomllib
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aria.errors import ConfigError, PriceUnknown

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice

PriceSource = Literal["genai-prices", "override"]
_MICROS = Decimal(1_000_000)
_MTOK = Decimal(1_000_000)
_TOKEN_PRICES = ("input_mtok", "output_mtok", "cache_read_mtok")
# Prices for units Aria never reports (cache writes, searches, audio, images, video): with none of them in the usage
# they add nothing. A model priced in any other unit (per request, per character, ...) is left to the table's own
# calculation.
_UNREPORTED_UNITS = frozenset({
    "cache_write_mtok", "cache_write_1h_mtok", "web_searches_kcount", "storage_searches_kcount", "input_audio_mtok",
    "output_audio_mtok", "cache_audio_read_mtok", "audio_hours", "input_audio_hours", "input_image_mtok",
    "output_image_mtok", "cache_image_read_mtok", "input_video_mtok", "output_video_mtok",
})


@dataclass(frozen=True)
class TokenCounts:
    """Tokens of one call as the provider reports them. `prompt` includes `cached`; `completion` includes
    `reasoning` (that is how OpenAI-compatible endpoints bill them)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class FlatRates:
    """Dollars per million tokens, the same for every token of a kind (no tiers by prompt size): what the override
    file sets, and what most of the table's prices are."""

    input: Decimal
    output: Decimal
    cached_input: Decimal

    def dollars(self, tokens: TokenCounts) -> Decimal:
        """The price of one call's tokens."""
        return (Decimal(tokens.prompt - tokens.cached) * self.input + Decimal(tokens.cached) * self.cached_input
                + Decimal(tokens.completion) * self.output) / _MTOK


def flat_rates(price: ModelPrice) -> FlatRates | None:
    """A table price as flat token rates, when it is one; None when only the table's calculation is exact (tiers,
    or a unit priced per request or character)."""
    values = {key: value for key, value in vars(price).items() if value is not None}
    input_rate, output_rate, cached = (values.get(key) for key in _TOKEN_PRICES)
    if not isinstance(input_rate, Decimal) or not isinstance(output_rate, Decimal) \
            or not isinstance(cached, Decimal | None) or not set(values) <= {*_TOKEN_PRICES, *_UNREPORTED_UNITS}:
        return None
    return FlatRates(input_rate, output_rate, input_rate if cached is None else cached)


class PriceBook:
    """Prices calls in micro-dollars."""

    def __init__(self, overrides_file: Path | None = None, *, provider_id: str | None = None) -> None:
        self.provider_id = provider_id
        self.overrides = load_overrides(overrides_file) if overrides_file else {}
        # Models the table has priced once, with their entries. Its data is the snapshot bundled with the package,
        # fixed for the life of the process, so such a model stays priced; an unknown model is looked up again each
        # time (fails closed).
        self._table_models: dict[str, ModelInfo] = {}

    def source(self, model: str) -> PriceSource:
        """Where this model's price comes from; raises PriceUnknown when nowhere."""
        if model in self.overrides:
            return "override"
        if model not in self._table_models:
            self._dollars(model, TokenCounts(prompt=1))  # raises PriceUnknown, or caches the model's entry
        return "genai-prices"

    def is_known(self, model: str) -> bool:
        """True when the model can be priced."""
        try:
            self.source(model)
        except PriceUnknown:
            return False
        return True

    def cost_micros(self, model: str, tokens: TokenCounts) -> int:
        """The billed cost of a call, rounded to the nearest micro-dollar."""
        return int((self._dollars(model, tokens) * _MICROS).to_integral_value(ROUND_HALF_UP))

    def worst_case_micros(self, model: str, prompt_upper: int, max_tokens: int) -> int:
        """An upper bound: every prompt token at the full input rate, every allowed output token billed."""
        dollars = self._dollars(model, TokenCounts(prompt=prompt_upper, completion=max_tokens))
        return math.ceil(dollars * _MICROS)

    def fit_max_tokens(self, model: str, prompt_upper: int, budget_micros: int, ceiling: int) -> int:
        """The largest max_tokens (≤ ceiling) whose worst case fits in budget_micros; 0 when none does."""
        return self.fit(model, prompt_upper, budget_micros, ceiling)[0]

    def fit(self, model: str, prompt_upper: int, budget_micros: int, ceiling: int) -> tuple[int, int]:
        """fit_max_tokens, with the worst case of the tokens it returns (so a reservation need not price it again).

        Cost is monotonic in output tokens, so when the ceiling fits nothing smaller needs pricing.
        """
        top = self._dollars(model, TokenCounts(prompt=prompt_upper, completion=ceiling))
        if math.ceil(top * _MICROS) <= budget_micros:
            return ceiling, math.ceil(top * _MICROS)
        bottom = self._dollars(model, TokenCounts(prompt=prompt_upper))
        if math.ceil(bottom * _MICROS) > budget_micros:
            return 0, math.ceil(bottom * _MICROS)
        solved = self._solve(model, prompt_upper, budget_micros, ceiling, (top - bottom) / ceiling, bottom)
        if solved is not None:
            return solved
        low, high = 0, ceiling  # bisect for the exact fit
        while low < high:
            mid = (low + high + 1) // 2
            if self.worst_case_micros(model, prompt_upper, mid) <= budget_micros:
                low = mid
            else:
                high = mid - 1
        return low, self.worst_case_micros(model, prompt_upper, low)

    def _solve(self, model: str, prompt_upper: int, budget_micros: int, ceiling: int, rate: Decimal,
               base: Decimal) -> tuple[int, int] | None:
        """The fit solved from the output rate, confirmed by pricing it and one token more; None if unconfirmed.

        For a given prompt every output token costs the same, so the answer can be solved for rather than bisected
        (four price look-ups instead of a dozen when a cap binds); the confirmation makes the result exactly the
        bisection's, whatever the price table holds.
        """
        if rate <= 0:
            return None
        guess = min(ceiling - 1, max(0, int((Decimal(budget_micros) / _MICROS - base) / rate)))
        cost = self.worst_case_micros(model, prompt_upper, guess)
        if cost <= budget_micros < self.worst_case_micros(model, prompt_upper, guess + 1):
            return guess, cost
        return None

    def _dollars(self, model: str, tokens: TokenCounts) -> Decimal:
        override = self.overrides.get(model)
        if override is not None:
            return override.dollars(tokens)
        # Every call is priced twice (reservation, settlement); the table's general calculation costs more than the
        # SQL of a turn, so a flat-priced model (most are) is priced from its rates, which give the same figure.
        info = self._table_models.get(model)
        if info is not None:
            rates = flat_rates(info.get_prices(dt.datetime.now(dt.UTC)))
            if rates is not None:
                return rates.dollars(tokens)
        from genai_prices import Usage, calc_price  # deferred: the price table is large

        usage = Usage(input_tokens=tokens.prompt, output_tokens=tokens.completion,
                      cache_read_tokens=tokens.cached or None)
        priced = None
        for provider_id in dict.fromkeys((self.provider_id, None)):  # the configured provider, then any
            with contextlib.suppress(LookupError):
                priced = calc_price(usage, model, provider_id=provider_id)
                break
        if priced is not None:
            self._table_models[model] = priced.model
            return priced.total_price
        raise PriceUnknown(f"no price known for model {model!r}: add it to the file named by ARIA_PRICES_FILE")


def load_overrides(path: Path) -> dict[str, FlatRates]:
    """Read the override file; a malformed one is a configuration error naming the file and model."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"ARIA_PRICES_FILE: cannot read {path}: {exc}"]) from None
    prices: dict[str, FlatRates] = {}
    for model, entry in (data.get("models") or {}).items():
        try:
            input_rate = Decimal(str(entry["input"]))
            output_rate = Decimal(str(entry["output"]))
            cached = Decimal(str(entry.get("cached_input", entry["input"])))
        except (KeyError, TypeError, ArithmeticError):
            raise ConfigError(
                [f"ARIA_PRICES_FILE: model {model!r} needs numeric 'input' and 'output' (USD per million tokens)"]
            ) from None
        if min(input_rate, output_rate, cached) < 0:
            raise ConfigError([f"ARIA_PRICES_FILE: model {model!r} has a negative price"])
        prices[model] = FlatRates(input_rate, output_rate, cached)
    return prices
