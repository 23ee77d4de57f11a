"""Voice notes to text through an OpenAI-compatible `/v1/audio/transcriptions` endpoint, priced and capped like any
model call.

Transcription is priced per audio minute: ARIA_TRANSCRIBE_USD_PER_MINUTE when set (0 for a local server), else the
genai-prices table when it prices the model by audio duration (whisper-1: $0.006 a minute); a model priced neither
way is refused (fails closed, as an unpriced chat model does). Before the call the worst case (the duration
Telegram reports plus one second, at that price) is reserved as a `spend` row, checked against the per-request cap
(ARIA_RUN_MAX_USD) and what is left of the day in the same IMMEDIATE transaction; after it the row is settled to
the duration the endpoint reports (or the reported one when it reports none). A timed-out call may be billed: it
keeps the worst case, marked estimated. The row names the recorded message it came with (`event_id`); the run that
answers that message adopts it when it opens, so the transcription counts against that run's caps too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import openai

from aria.errors import AriaError
from aria.ledger import Ledger, Spend, usd_to_micros
from aria.ledger.reports import format_usd
from aria.llm.budget import Budget
from aria.sanitize import clean_text

if TYPE_CHECKING:
    from aria.config import Settings

log = logging.getLogger(__name__)
PriceSource = Literal["setting", "genai-prices"]  # ARIA_TRANSCRIBE_USD_PER_MINUTE, or the table
_MICROS = Decimal(1_000_000)


class TranscriptionRefused(AriaError):
    """A voice note was not transcribed: the message says why, for the owner (nothing was spent, or what may have
    been is recorded)."""


@dataclass(frozen=True)
class Transcript:
    """What a voice note said, and what hearing it cost."""

    text: str
    seconds: float
    cost_micros: int
    spend_id: int


@dataclass(frozen=True)
class MinutePrice:
    """Dollars per audio minute, and where that figure comes from."""

    usd: Decimal
    source: PriceSource

    def micros(self, seconds: float) -> int:
        """The price of `seconds` of audio, rounded up to a whole micro-dollar."""
        return math.ceil(self.usd * Decimal(str(seconds)) / 60 * _MICROS)


class Transcriber:
    """Transcribes audio within the per-request and daily caps, recording each call as a spend row."""

    def __init__(self, client: openai.AsyncOpenAI, ledger: Ledger, budget: Budget, *, model: str,
                 request_cap_micros: int, usd_per_minute: float | None, timeout: float) -> None:
        self.client = client
        self.ledger = ledger
        self.budget = budget
        self.model = model
        self.request_cap = request_cap_micros
        self.usd_per_minute = usd_per_minute
        self.timeout = timeout

    def price(self) -> MinutePrice:
        """What a minute of audio costs with this model; TranscriptionRefused when no price is known."""
        if self.usd_per_minute is not None:
            return MinutePrice(Decimal(str(self.usd_per_minute)), "setting")
        found = table_minute_price(self.model)
        if found is None:
            raise TranscriptionRefused(
                f"Voice notes are on, but I know no price for {self.model}, so I can't keep them within the budget. "
                "Set ARIA_TRANSCRIBE_USD_PER_MINUTE (0 for a server of your own).")
        return MinutePrice(found, "genai-prices")

    async def transcribe(self, audio: bytes, file_name: str, seconds: float, *,
                         event_id: int | None = None) -> Transcript:
        """The text of a voice note of `seconds` (as its sender reports it). TranscriptionRefused when a cap or a
        missing price stops it, or the endpoint fails (the failure is recorded)."""
        price = self.price()
        worst = price.micros(max(seconds, 0) + 1)
        spend_id = self._reserve(worst, price, event_id)
        try:
            response = await self.client.audio.transcriptions.create(
                model=self.model, file=(file_name, audio), response_format="json", timeout=self.timeout)
        except openai.APIError as exc:
            # A timeout may have been billed: the worst case stays as an estimate. Anything else billed nothing.
            self._close(spend_id, worst if isinstance(exc, openai.APITimeoutError) else None)
            self.ledger.add_failure("transcription", exc, "reported")
            log.warning("transcription with %s failed: %s", self.model, type(exc).__name__)
            raise TranscriptionRefused(f"I couldn't transcribe that voice note: {_why(exc)}. Try again, or type "
                                       "it.") from None
        except BaseException:
            self._close(spend_id, worst)  # cancelled or a bug of ours after a request that may be billed
            raise
        usage = response.usage
        billed = usage.seconds if usage is not None and usage.type == "duration" else float(seconds)
        cost = price.micros(billed)
        raw = usage.model_dump() if usage is not None else {"type": "duration", "seconds": billed, "reported": False}
        with self.ledger.write_conn() as conn:
            self.ledger.update_row(conn, Spend, spend_id, {
                "status": "settled", "cost_micros": cost, "settled_at": self.ledger.now(),
                "prompt_tokens": getattr(usage, "input_tokens", 0) or 0,
                "completion_tokens": getattr(usage, "output_tokens", 0) or 0,
                "usage_json": json.dumps(raw, default=str)})
        return Transcript(clean_text(response.text or "").strip(), billed, cost, spend_id)

    def _reserve(self, worst: int, price: MinutePrice, event_id: int | None) -> int:
        """Check the caps and insert the reservation, in one IMMEDIATE transaction (concurrent runs cannot pass a
        cap together)."""
        day = self.budget.today()
        with self.ledger.write_conn() as conn:
            # The owner's /budget overrides count here as for any call, read in the reserving transaction.
            request_cap = self.budget.overrides.request_cap(self.request_cap, conn)
            if worst > request_cap:
                raise TranscriptionRefused(
                    f"That voice note could cost up to {format_usd(worst)} to transcribe, over the "
                    f"{format_usd(request_cap)} a request may spend (/budget, ARIA_RUN_MAX_USD). Send a shorter one.")
            day_cap = self.budget.overrides.day_cap(conn, self.budget.base_day_cap, day)
            left = day_cap - Budget.spent_on(conn, day)
            if worst > left:
                raise TranscriptionRefused(
                    f"Not transcribed: {format_usd(max(left, 0))} is left of today's budget (ARIA_DAY_MAX_USD), and "
                    f"that voice note could cost up to {format_usd(worst)}.")
            return self.ledger.insert(conn, Spend, {
                "run_id": None, "event_id": event_id, "provider": self.budget.provider, "model": self.model,
                "status": "reserved", "reserved_micros": worst, "price_source": price.source, "day": day,
                "created_at": self.ledger.now()})

    def _close(self, spend_id: int, billed_unknown: int | None) -> None:
        """A failed call: released, or (when it may be billed) kept at the worst case as an estimate."""
        values: dict[str, object] = {"settled_at": self.ledger.now()}
        if billed_unknown is None:
            values["status"] = "released"
        else:
            values |= {"status": "settled", "cost_micros": billed_unknown, "price_known": False}
        with self.ledger.write_conn() as conn:
            self.ledger.update_row(conn, Spend, spend_id, values)


def table_minute_price(model: str) -> Decimal | None:
    """The genai-prices price of a minute of audio for a model it prices by audio duration; None otherwise (unknown,
    or priced per token, which a minute cannot be turned into before the call)."""
    from genai_prices import Usage, calc_price  # deferred: the price table is large

    try:
        priced = calc_price(Usage(audio_seconds=60, input_audio_seconds=60), model)
    except LookupError:
        return None
    rates = priced.model.get_prices(dt.datetime.now(dt.UTC))
    if not (getattr(rates, "audio_hours", None) or getattr(rates, "input_audio_hours", None)):
        return None
    return priced.total_price


def _why(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"the transcription endpoint answered HTTP {exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "the transcription endpoint timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "the transcription endpoint could not be reached"
    return "the transcription endpoint sent a reply I could not read"


def build_transcriber(settings: Settings, ledger: Ledger, budget: Budget) -> Transcriber | None:
    """The transcriber ARIA_TRANSCRIBE_MODEL asks for, on ARIA_TRANSCRIBE_BASE_URL (else the model endpoint); None
    when voice notes are off (no model named, or no endpoint to send them to)."""
    base_url = settings.transcribe_base_url or settings.openai_base_url
    if not settings.transcribe_model or not (base_url or settings.openai_api_key):
        return None
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "unused"
    # Not streamed: the whole transcript is its first token, so the first-token window bounds the call.
    timeout = settings.llm_first_token_seconds
    client = openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
    return Transcriber(client, ledger, budget, model=settings.transcribe_model,
                       request_cap_micros=usd_to_micros(settings.run_max_usd),
                       usd_per_minute=settings.transcribe_usd_per_minute, timeout=timeout)


__all__ = ["MinutePrice", "Transcriber", "Transcript", "TranscriptionRefused", "build_transcriber",
           "table_minute_price"]
