"""Digest charts: PNGs drawn with matplotlib's object-oriented API on the Agg canvas (a `Figure`, never pyplot and
its global state, so charts can be drawn in worker threads). Sized for a phone: 1080 px wide, large type, thick
lines and the Okabe-Ito colours, which stay distinct for colour-blind readers and in dark mode's dimmed photos.

matplotlib is imported inside the functions: importing it takes most of a second, and only a digest needs it.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from typing import TYPE_CHECKING

from aria.digest.data import Series
from aria.ledger import MICROS
from aria.ledger.reports import format_usd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_IN = 10.8
DPI = 100  # 10.8 in x 100 dpi = 1080 px
FONT = 22
SMALL = 18
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER = "#999999"
OUTCOME_COLOURS = {"ok": "#009E73", "degraded": "#E69F00", "handoff": "#0072B2", "rejected": "#CC79A7",
                   "failed": "#D55E00", "other": OTHER}
MAX_LABELS = 31  # every day is labelled up to a month; longer ranges are thinned out
WEEKDAY_LABELS = 14  # up to two weeks a label names the weekday too
CAP_IN_SCALE = 3.0  # the daily budget shares the y axis while it is at most this many times the largest day
TINY = SMALL - 4  # type for dense day labels and the bar values (still legible on a phone)


def digest_chart(spend: Series, runs: Series, day_cap: int) -> bytes:
    """Two panels: spend per day stacked by model with the daily budget as a line; runs per day by outcome."""
    figure = _figure(height=13.5)
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 2))
    _spend_panel(top, spend, day_cap)
    _runs_panel(bottom, runs)
    return _png(figure)


def spend_chart(spend: Series, day_cap: int) -> bytes:
    """One panel: spend per day stacked by model with the daily budget as a line (for /cost)."""
    figure = _figure(height=8.1)
    _spend_panel(figure.subplots(), spend, day_cap)
    return _png(figure)


def _figure(height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, height), dpi=DPI, facecolor="white", layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def _spend_panel(ax: Axes, spend: Series, day_cap: int) -> None:
    """Bars scaled to the spend shown: at personal-use spend ($0.01 a day against a $2 budget) the budget line would
    flatten every bar to a hairline, so it shares the axis only when it is near the data; otherwise a note says
    where it is."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    xs = list(range(len(spend.days)))
    bottom = [0.0] * len(xs)
    for index, (model, values) in enumerate(spend.stacks.items()):
        dollars = [v / MICROS for v in values]
        colour = OTHER if model == "other" else PALETTE[index % len(PALETTE)]
        ax.bar(xs, dollars, bottom=bottom, width=0.75, color=colour, label=model, edgecolor="white", linewidth=0.8)
        bottom = [b + d for b, d in zip(bottom, dollars, strict=True)]
    cap = day_cap / MICROS
    top = max(bottom, default=0.0)
    if cap and (top == 0 or cap <= top * CAP_IN_SCALE):
        ax.axhline(cap, color="#000000", linestyle="--", linewidth=3, label=f"daily budget {format_usd(day_cap)}")
        scale = max(cap, top)
    else:
        scale = top
        share = f"{100 * top / cap:.1f}%" if cap else "n/a"
        ax.text(1.0, 1.0, f"daily budget {format_usd(day_cap)} is off the scale\n(largest day: {share} of it)",
                transform=ax.transAxes, ha="right", va="top", fontsize=TINY, color="#333333",
                bbox={"facecolor": "white", "edgecolor": "#999999", "boxstyle": "round,pad=0.3"})
    ax.set_ylim(0, scale * 1.45 or 1.0)  # headroom keeps the legend and the labels clear of the bars
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=3))
    decimals = _decimals(scale)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"${value:,.{decimals}f}"))
    _bar_values(ax, spend, bottom, scale * 1.45)
    total = sum(sum(values) for values in spend.stacks.values())
    _style(ax, spend, f"Spend per day: {format_usd(total)} in {len(spend.days)} days")


def _decimals(scale: float) -> int:
    """Enough decimals that the y ticks of a small scale differ ($0.004, $0.008), and no more than the cent above."""
    if scale <= 0:
        return 2
    return min(6, max(2, -math.floor(math.log10(scale * 1.45 / 5))))


def _bar_values(ax: Axes, spend: Series, totals: list[float], top: float) -> None:
    """Each day's total above its bar while there is room (up to two weeks), else today's only."""
    dense = len(totals) > WEEKDAY_LABELS
    for x, total in enumerate(totals):
        if total <= 0 or (dense and x != len(totals) - 1):
            continue
        ax.text(x, total + top * 0.01, format_usd(round(total * MICROS)).removeprefix("$"), ha="center",
                va="bottom", fontsize=TINY, color="#333333", rotation=90 if not dense and len(totals) > 7 else 0)


def _runs_panel(ax: Axes, runs: Series) -> None:
    from matplotlib.ticker import MaxNLocator

    xs = list(range(len(runs.days)))
    bottom = [0] * len(xs)
    for outcome, values in runs.stacks.items():
        ax.bar(xs, values, bottom=bottom, width=0.75, color=OUTCOME_COLOURS.get(outcome, OTHER), label=outcome,
               edgecolor="white", linewidth=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylim(0, max([1, *bottom]) * 1.45)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax, runs, f"Runs per day by outcome: {runs.total:,} in {len(runs.days)} days")


def _day_labels(days: tuple[dt.date, ...]) -> tuple[list[int], list[str], int]:
    """Tick positions and labels: every day up to a month (today always), weekdays up to two weeks, the month's
    name where it starts; and their type size."""
    count = len(days)
    step = max(1, -(-count // MAX_LABELS))
    positions = list(range(count - 1, -1, -step))[::-1]  # counted back from today, so today is always labelled
    labels: list[str] = []
    for index in positions:
        day = days[index]
        if count <= WEEKDAY_LABELS:
            labels.append(f"{day:%a}\n{day.day}")
        else:
            # The month under its first day, and under the first label unless a month starts right after it.
            soon = any(days[p].day <= step for p in positions[1:3])  # its own month label would collide
            starts = day.day <= step or (index == positions[0] and not soon)
            labels.append(f"{day.day}\n{day:%b}" if starts else str(day.day))
    return positions, labels, SMALL if count <= WEEKDAY_LABELS else TINY


def _style(ax: Axes, series: Series, title: str) -> None:
    positions, labels, size = _day_labels(series.days)
    ax.set_xticks(positions, labels, fontsize=size)
    ax.tick_params(axis="y", labelsize=SMALL)
    ax.tick_params(axis="both", length=0)
    ax.set_xlim(-0.6, len(series.days) - 0.4)
    ax.set_title(title, loc="left", fontsize=FONT, fontweight="bold", color="#000000")
    ax.grid(axis="y", color="#DDDDDD", linewidth=1)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", ncol=3, fontsize=SMALL, frameon=True, framealpha=0.9, edgecolor="white",
              handlelength=1.2, columnspacing=1.0)
