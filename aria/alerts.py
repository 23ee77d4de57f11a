"""Budget and spend-anomaly alerts, computed from the ledger (never by asking a model) and sent through the outbox.

Budget: at 50 %, 80 % and 100 % of the daily cap, one alert each per local day. A jump past several thresholds at
once sends one alert, for the highest, and marks the lower ones as sent.

Anomaly: spend well above its recent median, in one of two windows:
  hour  the last 60 minutes against the same 60 minutes of the clock on each of the 7 previous days;
  day   today so far against the 7 previous days' totals (a partial day against whole ones, so it errs quiet).
An amount is anomalous at `anomaly_factor` x its baseline and at least MIN_ANOMALY. The baseline is the median, but
never below the average rate of the 7 previous days, so an hour that is usually idle needs real money to alarm.
Without any spend in the 7 previous days there is nothing to compare with, and no anomaly. One alert per window
per local day, naming the runs and skills behind it.

Send-once: a ledger flag per (day, alert), plus the outbox dedupe key per owner, so a crash between the two cannot
send an alert twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aria.digest.data import CostlyRun, median_micros, runs_behind, spend_in_windows
from aria.digest.text import clip
from aria.ledger import as_utc, usd_to_micros
from aria.ledger.reports import format_usd, local_day_bounds, spend_summary
from aria.outbox import Outbox

if TYPE_CHECKING:
    from aria.app import Aria

THRESHOLDS = (50, 80, 100)
MIN_ANOMALY = usd_to_micros(0.01)  # smaller amounts are never an anomaly, whatever their ratio
BASELINE_DAYS = 7
HOUR = dt.timedelta(hours=1)
Window = Literal["hour", "day"]
WINDOWS: tuple[Window, ...] = ("hour", "day")
BASELINE_REUSE: dict[Window, dt.timedelta] = {"hour": dt.timedelta(minutes=1), "day": dt.timedelta(days=1)}


@dataclass(frozen=True)
class Anomaly:
    """Spend in a window against its baseline, and the runs behind it."""

    window: Window
    spent: int
    baseline: int
    runs: list[CostlyRun]


class Alerts:
    """Checks today's spend against the daily cap and its recent history; queues one alert per finding per day."""

    def __init__(self, aria: Aria, outbox: Outbox) -> None:
        self.aria = aria
        self.outbox = outbox
        self.ledger = aria.ledger
        self.tz = aria.settings.tz
        self.factor = aria.settings.anomaly_factor
        self._baselines: dict[Window, tuple[dt.date, dt.datetime, int | None]] = {}
        aria.budget.on_threshold.append(self.reached)

    def reached(self, day: str, threshold: int) -> None:
        """A reservation took the day past `threshold` % of its cap, or the cap refused a call (100): the alert is
        due at the next check even if settled spend stays below the line (a refusal can come at 79 %)."""
        self.ledger.claim_flag(_reached_key(day, threshold), "reserved" if threshold < 100 else "refused")

    def check(self, now: dt.datetime | None = None) -> list[str]:
        """Queue the alerts due now; returns their texts (empty when there is nothing new to say)."""
        now = as_utc(now) if now is not None else self.ledger.now()
        day = now.astimezone(self.tz).date()
        budget_keys = {t: f"alert:budget:{day.isoformat()}:{t}" for t in THRESHOLDS}
        anomaly_keys = {window: f"alert:anomaly:{day.isoformat()}:{window}" for window in WINDOWS}
        reached_keys = {t: _reached_key(day.isoformat(), t) for t in THRESHOLDS}
        # Checked after every run: one read of the flags says what was sent and what reservations reached.
        sent = self.ledger.get_flags([*budget_keys.values(), *anomaly_keys.values(), *reached_keys.values()])
        reached = {t for t, key in reached_keys.items() if key in sent}
        texts: list[str] = []
        budget = self._budget_alert(day, {t: key for t, key in budget_keys.items() if key not in sent}, reached)
        if budget is not None:
            texts.append(budget)
        for window, key in anomaly_keys.items():
            if key in sent:
                continue
            anomaly = self.anomaly(window, now)
            if anomaly is not None:
                text = anomaly_text(anomaly, self.factor)
                self._send(key, text)
                texts.append(text)
        return texts

    # budget -----------------------------------------------------------------------------------------------

    def _budget_alert(self, day: dt.date, unsent: dict[int, str], reached: set[int]) -> str | None:
        if not unsent:
            return None
        cap = self.aria.budget.day_cap_on(day.isoformat())
        spent = self.aria.budget.day_spent(day.isoformat())
        top_reached = max(reached, default=0)
        fresh = [t for t in THRESHOLDS if (spent * 100 >= cap * t or t <= top_reached) and t in unsent]
        if not fresh:
            return None
        top = fresh[-1]
        skills = spend_summary(self.ledger, day, day, "skill")[:3]
        text = budget_text(top, spent, cap, ", ".join(f"{s.key} {format_usd(s.cost_micros)}" for s in skills),
                           self.aria.settings.timezone, refused=100 in reached)
        self._send(unsent[top], text)
        for threshold in fresh[:-1]:
            self.ledger.claim_flag(unsent[threshold], "passed")  # jumped over: no separate alert
        return text

    # anomalies --------------------------------------------------------------------------------------------

    def anomaly(self, window: Window, now: dt.datetime) -> Anomaly | None:
        """Spend in `window` ending `now`, if it is anomalous against the same window on the 7 previous days."""
        now = as_utc(now)
        local = now.astimezone(self.tz)
        history_start, _ = local_day_bounds(local.date() - dt.timedelta(days=BASELINE_DAYS), self.tz)
        today_start, _ = local_day_bounds(local.date(), self.tz)
        if window == "hour":
            current = (now - HOUR, now)
            past = [_shift(local, days) for days in range(1, BASELINE_DAYS + 1)]
            windows = [current, *((end - HOUR, end) for end in past), (history_start, today_start)]
            periods = BASELINE_DAYS * 24
        else:
            current = (today_start, now)
            days = [local.date() - dt.timedelta(days=n) for n in range(1, BASELINE_DAYS + 1)]
            windows = [current, *(local_day_bounds(d, self.tz) for d in days), (history_start, today_start)]
            periods = BASELINE_DAYS
        (spent,) = spend_in_windows(self.ledger, windows[:1])
        if spent < MIN_ANOMALY:
            return None  # checked after every run: most of the time one small sum settles it
        baseline = self._baseline(window, now, windows[1:], periods)
        if baseline is None or spent < max(MIN_ANOMALY, round(self.factor * baseline)):
            return None  # no recent spend to compare with, or nothing unusual
        return Anomaly(window, spent, baseline, runs_behind(self.ledger, *current))

    def _baseline(self, window: Window, now: dt.datetime, windows: list[tuple[dt.datetime, dt.datetime]],
                  periods: int) -> int | None:
        """The usual spend for `window` (None without any in the 7 previous days). Past spend does not change, so a
        baseline is reused: the day's all day, the sliding hour's for up to a minute (its windows move by less)."""
        day = now.astimezone(self.tz).date()
        cached = self._baselines.get(window)
        if cached is not None and cached[0] == day and now - cached[1] < BASELINE_REUSE[window]:
            return cached[2]
        *baseline_windows, history = spend_in_windows(self.ledger, windows)
        baseline = max(median_micros(baseline_windows), history // periods) if history else None
        self._baselines[window] = (day, now, baseline)
        return baseline

    def _send(self, flag: str, text: str) -> None:
        for owner in self.aria.settings.owner_ids:
            self.outbox.enqueue(owner, text, purpose="alert", dedupe_key=f"{flag}:{owner}")
        self.ledger.claim_flag(flag, "sent")


def _reached_key(day: str, threshold: int) -> str:
    return f"alert:reached:{day}:{threshold}"


def _shift(local: dt.datetime, days: int) -> dt.datetime:
    # The same wall-clock time `days` earlier (so a DST change does not move the window), as UTC so that
    # subtracting an hour from it is real time.
    earlier = dt.datetime.combine(local.date() - dt.timedelta(days=days), local.time(), tzinfo=local.tzinfo)
    return earlier.astimezone(dt.UTC)


def budget_text(threshold: int, spent: int, cap: int, top_skills: str, timezone: str, *,
                refused: bool = False) -> str:
    """The alert for a daily-budget threshold."""
    percent = 100 * spent // cap if cap else 100
    mostly = f" Mostly: {top_skills}." if top_skills else ""
    if threshold >= 100:
        used = (f"{format_usd(spent)} of {format_usd(cap)} spent, too little left for another call"
                if refused and spent < cap else f"{format_usd(spent)} of {format_usd(cap)}")
        return (f"⛔ Today's budget is used up: {used}. Model calls are refused until midnight ({timezone}). "
                f"/budget today +<usd> raises today's cap once.{mostly}")
    if percent < threshold:  # a reservation crossed the line; what was spent in the end may be less
        return (f"⚠ Budget: a call reserved past {threshold}% of today's {format_usd(cap)} (spent so far "
                f"{format_usd(spent)}, {percent}%).{mostly}")
    return f"⚠ Budget: {percent}% of today's {format_usd(cap)} spent ({format_usd(spent)}).{mostly}"


def anomaly_text(anomaly: Anomaly, factor: float) -> str:
    """The alert for a spend anomaly, naming the runs and skills behind it."""
    where = "in the last hour" if anomaly.window == "hour" else "today so far"
    usual = "for this hour" if anomaly.window == "hour" else "a day"
    ratio = f"{anomaly.spent / anomaly.baseline:.1f}× " if anomaly.baseline else ""
    lines = [f"⚠ Spend anomaly: {format_usd(anomaly.spent)} {where}, {ratio}the usual "
             f"{format_usd(anomaly.baseline)} {usual} (alert at {factor:g}×, 7-day median)."]
    if anomaly.runs:
        lines.append("Behind it:")
        for run in anomaly.runs:
            skills = ", ".join(run.skills) or "chat"
            lines.append(f"• run #{run.id} {format_usd(run.cost_micros)} [{skills}] {run.status}: {clip(run.request)}")
        names = sorted({skill for run in anomaly.runs for skill in (run.skills or ("chat",))})
        lines.append("Skills: " + ", ".join(names))
    return "\n".join(lines)
