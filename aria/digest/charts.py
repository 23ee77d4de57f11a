"""Digest charts: PNGs drawn with matplotlib's object-oriented API on the Agg canvas (a `Figure`, never pyplot and
its global state, so charts can be drawn in worker threads). Sized for a phone: 1080 px wide, large type, thick
lines and the Okabe-Ito colours, which stay distinct for colour-blind readers and in dark mode's dimmed photos.

matplotlib is imported inside the functions: importing it takes most of a second, and only a digest needs it.
"""

from __future__ import annotations

import io
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
MAX_LABELS = 14  # day labels on the x axis before they are thinned out


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
    from matplotlib.ticker import FuncFormatter

    xs = list(range(len(spend.days)))
    bottom = [0.0] * len(xs)
    for index, (model, values) in enumerate(spend.stacks.items()):
        dollars = [v / MICROS for v in values]
        colour = OTHER if model == "other" else PALETTE[index % len(PALETTE)]
        ax.bar(xs, dollars, bottom=bottom, width=0.75, color=colour, label=model, edgecolor="white", linewidth=0.8)
        bottom = [b + d for b, d in zip(bottom, dollars, strict=True)]
    cap = day_cap / MICROS
    ax.axhline(cap, color="#000000", linestyle="--", linewidth=3, label=f"daily budget {format_usd(day_cap)}")
    ax.set_ylim(0, max([cap, *bottom]) * 1.45)  # headroom keeps the legend clear of the bars
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"${value:,.2f}"))
    total = sum(sum(values) for values in spend.stacks.values())
    _style(ax, spend, f"Spend per day: {format_usd(total)} in {len(spend.days)} days")


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


def _style(ax: Axes, series: Series, title: str) -> None:
    step = max(1, -(-len(series.days) // MAX_LABELS))
    label = "%a" if step == 1 else "%b"  # weekdays for two weeks; months once labels are thinned out
    ax.set_xticks(range(0, len(series.days), step),
                  [f"{d:{label}}\n{d.day}" for d in series.days[::step]], fontsize=SMALL)
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
