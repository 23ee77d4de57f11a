"""Time to first visible text: a slow model's answer, streamed to the owner as it is written, against the time the
same answer takes when nothing is shown until it is complete.

The fake model writes one piece (about a word) every `--delay` seconds. For each turn a message is injected into the
fake Bot API and timed, by the fake's own stamps, to the first call that puts answer text on the owner's screen (a
sendMessageDraft, or the edit of the progress message when drafts are unavailable) and to the final message. The
baseline, measured in the same run against the same fake, is the non-streamed time to answer: one plain
chat-completions request for the same answer (the owner would see nothing before it returns), plus the same Bot API
path, which is the final message's own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import openai

from aria.app import Aria
from bench.common import OWNER, grid, median, percentile, settings_for
from tests.conftest import polling
from tests.fakes import FakeOpenAI, FakeTelegram

ANSWER_WORDS = 120


def _answer(turn: int) -> str:
    return f"Answer {turn}: " + " ".join(f"word{i}" for i in range(ANSWER_WORDS))


async def _non_streamed(model: FakeOpenAI, turns: int) -> list[float]:
    """The baseline: the whole answer, in one response, as a non-streamed call returns it."""
    times = []
    async with openai.AsyncOpenAI(base_url=model.base_url, api_key="bench", max_retries=0) as client:
        for turn in range(turns):
            model.enqueue_text(_answer(turn))
            started = time.monotonic()
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            times.append(time.monotonic() - started)
    return times


async def _streamed(model: FakeOpenAI, telegram: FakeTelegram, folder: Path, turns: int,
                    drafts: bool) -> tuple[list[float], list[float], int]:
    """(first visible text, final answer, Bot API preview calls) per turn, through Aria polling the fake."""
    telegram.drafts_supported = drafts
    aria = Aria.build(settings_for(folder, model.base_url, telegram_bot_token=telegram.token,
                                   telegram_api_url=telegram.api_url))
    first, final, previews = [], [], 0
    try:
        async with polling(aria):
            for turn in range(turns):
                text = _answer(turn)
                model.enqueue_text(text)
                telegram.clear_calls()
                injected = time.time()
                telegram.add_message(f"question {turn}", user_id=OWNER)
                # Without drafts the answer replaces the previewed message: its final edit is the answer.
                done = await telegram.wait_for("sendMessage" if drafts else "editMessageText", timeout=60,
                                               predicate=lambda c, t=text: c.ok and c.params.get("text") == t)
                shown = [c for c in telegram.calls
                         if c.ok and c.method in ("sendMessageDraft", "editMessageText", "sendMessage")
                         and str(c.params.get("text", "")).strip() and text.startswith(str(c.params["text"]))]
                first.append(min(c.at for c in shown) - injected)
                final.append(done[0].at - injected)
                previews += sum(c.method in ("sendMessageDraft", "editMessageText") for c in shown)
    finally:
        await aria.aclose()
    return first, final, previews


async def _measure(turns: int, delay: float) -> str:
    model, telegram = FakeOpenAI(), FakeTelegram()
    model.token_delay = delay
    with model, telegram, tempfile.TemporaryDirectory() as tmp:
        baseline = await _non_streamed(model, turns)
        rows = []
        for drafts in (True, False):
            first, final, previews = await _streamed(model, telegram, Path(tmp) / f"drafts-{drafts}", turns, drafts)
            how = "sendMessageDraft" if drafts else "edits of one message (no drafts)"
            rows.append([how, f"{median(first):.2f} s", f"{percentile(first, 0.95):.2f} s",
                         f"{median(final):.2f} s", f"{median(baseline):.2f} s",
                         f"{median(baseline) / max(median(first), 1e-9):.0f}x", f"{previews / turns:.1f}"])
    head = ["preview", "first visible text (median)", "p95", "full answer (median)",
            "non-streamed time to answer (baseline)", "sooner by", "preview calls per answer"]
    return (f"{turns} answers of {ANSWER_WORDS + 2} pieces, one every {delay * 1000:.0f} ms; previews at most once a "
            "second (ARIA_PREVIEW_SECONDS).\n\n" + grid(head, rows))


def main(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.03, help="seconds per generated piece")
    args = parser.parse_args(argv)
    result = asyncio.run(_measure(args.turns, args.delay))
    print(result)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
