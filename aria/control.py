"""The owner in control from the chat: `/new` (a fresh conversation), `/budget` (caps, spend, changes with a
Confirm button) and `/model` (the models, their circuits and spend; switching them).

A budget change is proposed first and applied by its Confirm press (callback `cfg:<id>:y`, or `/budget confirm <id>`
where there are no buttons); a model switch applies at once. Either way one `SettingChange` row records it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func
from sqlmodel import col, select

from aria.agent.outcome import Action
from aria.conversation import new_text, start_new
from aria.errors import LedgerUnavailable
from aria.ledger import COUNTED_MICROS, Spend, usd_to_micros
from aria.ledger.reports import format_usd
from aria.llm.budget import caps_from_settings
from aria.llm.router import Router

if TYPE_CHECKING:
    from aria.app import Aria
    from aria.config import Settings
    from aria.ledger import SettingChange
    from aria.overrides import Overrides

NAMES = ("new", "clear", "reset", "budget", "model")
MAX_USD = 10_000.0  # a typo guard: no personal cap is larger
BUDGET_USAGE = ("Usage: /budget, /budget day <usd>, /budget request <usd>, /budget today +<usd>, "
                "/budget day default (back to the setting)")
MODEL_USAGE = "Usage: /model, /model cheap <name>, /model strong <name>"
Tier = Literal["cheap", "strong"]


def new_conversation(aria: Aria, chat_id: int | None) -> str:
    """`/new`, `/clear`, `/reset`: start a fresh conversation in this chat."""
    if chat_id is None:
        return "No chat to start a new conversation in."
    try:
        return new_text(start_new(aria.ledger, chat_id))
    except LedgerUnavailable as exc:
        return f"Not changed: {exc}."


# /budget ------------------------------------------------------------------------------------------------------

def budget_text(aria: Aria) -> str:
    """The request and day caps, today's spend and what is left."""
    budget = aria.budget
    today = budget.today()
    cap, spent = budget.day_cap_on(today), budget.day_spent(today)
    raised = budget.overrides.raised_by(today)
    request = caps_from_settings(aria.settings, budget.overrides).micros
    base_request = usd_to_micros(aria.settings.run_max_usd)
    day_base = cap - raised
    lines = [
        f"Per request: {format_usd(request)}" + _source(request, base_request, "ARIA_RUN_MAX_USD"),
        f"Today's cap: {format_usd(cap)}" + (f" ({format_usd(day_base)} + {format_usd(raised)} raised for today)"
                                             if raised else _source(day_base, budget.base_day_cap, "ARIA_DAY_MAX_USD")),
        f"Spent today: {format_usd(spent)} ({100 * spent / cap if cap else 100:.1f}%), "
        f"left {format_usd(max(0, cap - spent))}",
        BUDGET_USAGE.replace("Usage: ", "Change: "),
    ]
    return "\n".join(lines)


def _source(value: int, setting: int, name: str) -> str:
    return f" (set by you; {name} says {format_usd(setting)})" if value != setting else f" ({name})"


def budget_command(aria: Aria, args: list[str], *, chat_id: int | None, user_id: int | None) -> tuple[str,
                                                                                                     list[Action]]:
    """`/budget ...`: the text to answer and any Confirm/Cancel buttons."""
    if not args:
        return budget_text(aria), []
    what = args[0].lower()
    if what in ("confirm", "cancel") and len(args) == 2:
        return decide_text(aria, args[1], confirm=what == "confirm", user_id=user_id), []
    if what not in ("day", "request", "today") or len(args) != 2:
        return BUDGET_USAGE, []
    overrides = aria.budget.overrides
    if what in ("day", "request") and args[1].lower() == "default":
        key = f"budget.{what}"
        change = overrides.propose(key, _current(aria, what), "", user_id=user_id, chat_id=chat_id)
        return (f"Set the {_label(what)} back to the setting? It applies from the next request.",
                confirm_actions(change))
    raw = args[1]
    if what == "today" and not raw.startswith("+"):
        return "Usage: /budget today +<usd> (raises only today's cap, once)", []
    usd = parse_usd(raw.removeprefix("+"))
    if usd is None:
        return f"{raw!r} is not an amount in dollars between 0 and {MAX_USD:,.0f} (e.g. 0.50).", []
    micros = usd_to_micros(usd)
    if what == "today":
        day = aria.budget.today()
        change = overrides.propose(f"budget.today:{day}", str(overrides.raised_by(day)), str(micros),
                                   user_id=user_id, chat_id=chat_id)
        cap = aria.budget.day_cap_on(day)
        return (f"Raise today's cap by {format_usd(micros)}, from {format_usd(cap)} to {format_usd(cap + micros)}, "
                f"for today only?", confirm_actions(change))
    change = overrides.propose(f"budget.{what}", _current(aria, what), str(micros), user_id=user_id,
                               chat_id=chat_id)
    now = format_usd(int(_current(aria, what)))
    warn = ""
    if what == "request" and micros > aria.budget.day_cap:
        warn = f" (more than today's cap of {format_usd(aria.budget.day_cap)}, which still applies)"
    return (f"Set the {_label(what)} to {format_usd(micros)} (now {now}){warn}? It applies from the next request "
            "and stays until you change it.", confirm_actions(change))


def _label(what: str) -> str:
    return "daily cap" if what == "day" else "per-request cap"


def _current(aria: Aria, what: str) -> str:
    if what == "day":
        return str(aria.budget.day_cap_on(aria.budget.today()) - aria.budget.overrides.raised_by(aria.budget.today()))
    return str(caps_from_settings(aria.settings, aria.budget.overrides).micros)


def parse_usd(raw: str) -> float | None:
    """A positive dollar amount ("0.5", "$2"), or None."""
    try:
        usd = float(raw.strip().removeprefix("$"))
    except ValueError:
        return None
    return usd if math.isfinite(usd) and 0 < usd <= MAX_USD else None


def confirm_actions(change_id: int) -> list[Action]:
    """The Confirm / Cancel buttons of a proposed change."""
    return [Action("Confirm", f"cfg:{change_id}:y"), Action("Cancel", f"cfg:{change_id}:n")]


def decide_text(aria: Aria, raw_id: str, *, confirm: bool, user_id: int | None) -> str:
    """Confirm or cancel a proposed change (a button press or `/budget confirm <id>`); a second press changes
    nothing."""
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):
        return "That change does not exist."
    change_id = int(raw_id)
    overrides = aria.budget.overrides
    existing = overrides.get(change_id)
    if existing is None:
        return "That change does not exist."
    if existing.status != "proposed":
        return f"Already {existing.status}; nothing changed."
    stale = existing.key.startswith("budget.today:") and existing.key != f"budget.today:{aria.budget.today()}"
    if not confirm or stale:
        overrides.cancel(change_id, user_id)
        return (f"That raise was for {existing.key.split(':', 1)[1]}, which is over; nothing changed." if stale
                else "Cancelled; nothing changed.")
    applied = overrides.apply(change_id, user_id)
    if applied is None:
        return "Already decided; nothing changed."
    return f"Done: {describe(applied)}.\n\n{budget_text(aria)}"


def describe(change: SettingChange) -> str:
    """A change in words."""
    if change.key.startswith("budget.today:"):
        return f"today's cap raised by {format_usd(int(change.new_value))}"
    what = {"budget.day": "daily cap", "budget.request": "per-request cap"}.get(change.key, change.key)
    if not change.new_value:
        return f"{what} back to the setting"
    if change.key.startswith("budget."):
        return f"{what} set to {format_usd(int(change.new_value))}"
    return f"{what} set to {change.new_value}"


def raise_today(aria: Aria, user_id: int | None, chat_id: int | None, run_id: int) -> int:
    """The "Raise today's cap" button of a day-capped refusal: today's cap goes up by room for one request, once
    (the press is the confirmation; an audit row records it). Returns the raise in micro-dollars."""
    overrides = aria.budget.overrides
    day = aria.budget.today()
    micros = aria.budget.raise_for(caps_from_settings(aria.settings, overrides).micros)
    change = overrides.propose(f"budget.today:{day}", str(overrides.raised_by(day)), str(micros), user_id=user_id,
                               chat_id=chat_id, run_id=run_id)
    overrides.apply(change, user_id)
    return micros


# /model -------------------------------------------------------------------------------------------------------

def model_command(aria: Aria, args: list[str], *, chat_id: int | None, user_id: int | None) -> str:
    """`/model`: the models with their circuits and today's spend; `/model cheap|strong <name>` switches one."""
    if not args:
        return models_text(aria)
    if len(args) != 2 or args[0].lower() not in ("cheap", "strong"):
        return MODEL_USAGE
    tier: Tier = "cheap" if args[0].lower() == "cheap" else "strong"
    name = args[1].strip()
    if not name or len(name) > 200:
        return MODEL_USAGE
    if not aria.prices.is_known(name):
        return (f"Not switched: no price is known for {name}, so its calls would be refused (a dollar cap needs a "
                "price). Give it one in the file named by ARIA_PRICES_FILE.")
    old = aria.router.cheap if tier == "cheap" else aria.router.strong
    if name == old:
        return f"{name} is already the {tier} model."
    try:
        aria.budget.overrides.record(f"model.{tier}", old, name, user_id=user_id, chat_id=chat_id)
    except LedgerUnavailable as exc:
        return f"Not changed: {exc}."
    apply_models(aria)
    return f"The {tier} model is now {name} (was {old}), from the next request.\n\n{models_text(aria)}"


def current_router(settings: Settings, overrides: Overrides) -> Router:
    """The router from the settings with the owner's model choices (kept in the ledger) above them."""
    return Router(overrides.model("cheap") or settings.model_cheap, overrides.model("strong") or settings.model_strong,
                  tuple(settings.model_fallbacks), settings.cheap_only_share)


def apply_models(aria: Aria) -> None:
    """Use the owner's model choices in this process now."""
    router = current_router(aria.settings, aria.budget.overrides)
    aria.router = router
    aria.agent.use_router(router)


def models_text(aria: Aria) -> str:
    """Cheap, strong and fallback models: circuit state and today's spend each."""
    router = aria.router
    spent = _spend_by_model(aria)
    tiers = [("cheap", router.cheap), ("strong", router.strong), *(("fallback", m) for m in router.fallbacks)]
    lines = ["Models" + (f" at {aria.caller.endpoint}" if aria.caller is not None else " (no endpoint configured)")]
    for tier, model in tiers:
        price = "" if aria.prices.is_known(model) else ", ⚠ no price: refused"
        lines.append(f"{tier}: {model}, circuit {_circuit(aria, model)}, today {format_usd(spent.get(model, 0))}"
                     f"{price}")
    others = {m: v for m, v in spent.items() if m not in {m for _, m in tiers}}
    if others:
        lines.append("Also today: " + ", ".join(f"{m} {format_usd(v)}" for m, v in sorted(others.items())))
    lines.append(MODEL_USAGE.replace("Usage: ", "Switch: "))
    return "\n".join(lines)


def _circuit(aria: Aria, model: str) -> str:
    if aria.caller is None:
        return "n/a"
    breaker = aria.board.get(aria.caller.breaker_key(model))
    state = breaker.state
    until = breaker.open_until
    if state == "open" and until is not None:
        return f"open until {until.astimezone(aria.settings.tz):%H:%M:%S}"
    return state.replace("_", "-")


def _spend_by_model(aria: Aria) -> dict[str, int]:
    with aria.ledger.read() as s:
        rows = s.exec(select(Spend.model, func.sum(COUNTED_MICROS)).where(col(Spend.day) == aria.budget.today())
                      .group_by(col(Spend.model))).all()
    return {model: int(total or 0) for model, total in rows}
