"""Turn overhead through Telegram: Aria's real Application against the floor bot, on the same fake servers.

A turn is timed from injecting a message into the fake Bot API to the fake recording the reply's sendMessage (or
editMessageText), both stamped by the fake. Both bots long-poll the same fake with `poll_interval=0` and are measured
the same way, in alternating blocks so drift on a noisy machine hits both; the model is the fake's zero-latency
scripted reply. The fake answers a waiting long poll on a 10 ms tick, which both bots pay alike; a second figure
starts when the update reaches the bot (a stamp taken by a handler that runs before any other, added to both bots),
so it leaves polling out entirely.

The fakes run in a process of their own, as real servers would, so their work never competes with the bots' for
this process's interpreter lock.

Aria is measured twice: in one chat, as an owner uses it (each request carries up to 20 earlier exchanges of
history), and with a new chat per turn (no history), which isolates the cost of the history it sends.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

from telegram import Update
from telegram.ext import Application, ContextTypes, TypeHandler

from aria.app import Aria
from aria.telegram.bot import build_application, channel_of
from bench.common import OWNER, find_reply, grid, median, percentile, settings_for, verdict
from bench.floor_bot import build_floor_bot
from tests.fakes import FakeOpenAI, FakeTelegram

POLL_TIMEOUT = 10  # seconds a getUpdates long poll may wait, as `aria run` polls
TURN_EVERY = 0.075  # seconds between injections: two Bot API calls a turn stay under 30 requests/s
TARGET_RATIO = 1.25
App = Application  # type: ignore[type-arg]
Received = dict[int, float]


@dataclass
class Side:
    """One bot under test, how it picks a chat for a turn, and what was measured."""

    name: str
    application: App
    chat_for: Callable[[int], int]
    from_injection: list[float] = field(default_factory=list)
    from_receipt: list[float] = field(default_factory=list)


def stamp_receipts(application: App, received: Received) -> None:
    """Record when each update reaches the bot, before any of the bot's own handlers runs."""

    async def stamp(update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        received[update.update_id] = time.time()

    application.add_handler(TypeHandler(Update, stamp), group=-100)


class FakeHost:
    """The fake Bot API and model server, driven from the benchmark's process through a manager proxy."""

    def __init__(self) -> None:
        self.telegram, self.model = FakeTelegram().start(), FakeOpenAI().start()

    def endpoints(self) -> dict[str, str]:
        """What a bot needs to reach the fakes."""
        return {"token": self.telegram.token, "api_url": self.telegram.api_url, "bot_base": self.telegram.base_url,
                "model_url": self.model.base_url}

    def inject(self, text: str, chat_id: int) -> tuple[int, float]:
        """Queue a message from the owner; returns its update id and when it was queued."""
        self.telegram.clear_calls()
        injected = time.time()
        return self.telegram.add_message(text, user_id=OWNER, chat_id=chat_id), injected

    def reply_at(self, chat_id: int, after: float, timeout: float) -> float:
        """When the fake recorded the first reply to `chat_id` after `after`."""
        deadline = time.monotonic() + timeout
        while (reply := find_reply(self.telegram, chat_id, after)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to chat {chat_id} within {timeout} s")
            time.sleep(0.005)  # only paces the harness: the reply's time is the fake's own stamp
        return reply.at

    def longest_request(self) -> int:
        """The most messages one chat completion request carried."""
        return max(len(r.body["messages"]) for r in self.model.completions)

    def stop(self) -> None:
        """Stop both servers."""
        self.telegram.stop()
        self.model.stop()


class _Manager(BaseManager):
    pass


_Manager.register("FakeHost", FakeHost)


@contextmanager
def fake_host() -> Iterator[Any]:
    """A FakeHost in a new process (spawned: this one already runs threads); stopped on exit."""
    manager = _Manager(ctx=multiprocessing.get_context("spawn"))
    manager.start()
    host = manager.FakeHost()  # type: ignore[attr-defined]
    try:
        yield host
    finally:
        host.stop()
        manager.shutdown()


async def _block(host: Any, side: Side, received: Received, turns: int, offset: int, record: bool) -> None:
    """`turns` turns one at a time; only this side's updater polls during the block."""
    updater = side.application.updater
    assert updater is not None
    await updater.start_polling(poll_interval=0, timeout=POLL_TIMEOUT, allowed_updates=["message"])
    try:
        for index in range(turns):
            chat_id = side.chat_for(offset + index)
            update_id, injected = await asyncio.to_thread(host.inject, "hello", chat_id)
            # The proxy blocks: waiting in a worker thread keeps this loop (and the bot on it) running.
            replied = await asyncio.to_thread(host.reply_at, chat_id, injected, 10.0)
            if record:
                side.from_injection.append(replied - injected)
                side.from_receipt.append(replied - received.pop(update_id))
            # Paced under Telegram's flood limit (30 requests/s), which Aria's rate limiter enforces: back to back,
            # the limiter would hold Aria's replies and the figure would measure the pacing, not the code.
            await asyncio.sleep(max(0.0, injected + TURN_EVERY - time.time()))
    finally:
        await updater.stop()


async def _start(application: App, aria: Aria | None = None) -> None:
    """What `aria run` (or the floor's `run_polling`) does before it polls (the updater is started per block)."""
    await application.initialize()
    if aria is not None:
        await aria.start(channel_of(application))
    await application.start()


async def _stop(application: App, aria: Aria | None = None) -> None:
    """What `aria run` (or `run_polling`) does after it polls; the floor's post_shutdown closes its clients."""
    await application.stop()
    if aria is not None:
        await aria.stop()
    await application.shutdown()
    if aria is not None:
        await aria.aclose()
    if application.post_shutdown is not None:
        await application.post_shutdown(application)


async def _measure(sides: list[Side], host: Any, received: Received, turns: int, blocks: int) -> None:
    applications = list({id(side.application): side.application for side in sides}.values())
    for application in applications:
        await _start(application, application.bot_data.get("aria"))
    try:
        for side in sides:  # warm-up: imports, connection pools, the price table
            await _block(host, side, received, max(3, turns // 20), offset=-1000, record=False)
        per_block = max(1, turns // blocks)
        for block in range(blocks):
            for side in sides:
                await _block(host, side, received, per_block, offset=block * per_block, record=True)
    finally:
        for application in applications:
            await _stop(application, application.bot_data.get("aria"))


def _row(side: Side, floor: Side) -> list[str]:
    cells = []
    for ours, base, judged in ((side.from_injection, floor.from_injection, True),
                               (side.from_receipt, floor.from_receipt, False)):
        ratio = median(ours) / median(base)
        judgement = f" ({verdict(ratio, TARGET_RATIO)})" if judged and side is not floor else ""
        cells += [f"{median(ours) * 1000:.2f} / {percentile(ours, 0.99) * 1000:.2f}", f"{ratio:.2f}x{judgement}"]
    return [side.name, *cells]


def report(floor: Side, ours: list[Side], turns: int, history_messages: int) -> str:
    """The table: latency from injection and from receipt, median / p99, and the ratio of medians to the floor."""
    head = ["bot", "turn: injection → reply, median / p99 ms", "ratio", "received → reply, median / p99 ms", "ratio"]
    body = grid(head, [_row(side, floor) for side in (floor, *ours)])
    return (f"{body}\n\n{turns} turns per bot, paced every {TURN_EVERY * 1000:.0f} ms. The target "
            f"(≤ {TARGET_RATIO}x the floor) is on the turn, message in to reply out; the received → reply ratio leaves "
            "out delivery by the Bot API, so it shows the bots' own processing, where Aria's ledger writes and larger "
            "prompt weigh most. "
            f"In one chat Aria's request carried {history_messages} messages (system, history, the new text).")


async def measure(turns: int, blocks: int = 4) -> str:
    """Run the floor and Aria on the same fakes; returns the markdown report."""
    received: Received = {}
    with fake_host() as host, tempfile.TemporaryDirectory() as folder:
        url = host.endpoints()
        aria = Aria.build(settings_for(Path(folder), url["model_url"], telegram_bot_token=url["token"],
                                       telegram_api_url=url["api_url"]))
        floor_app = build_floor_bot(url["token"], url["bot_base"], url["model_url"])
        aria_app = build_application(aria)  # one Application, chatted with in two ways
        for application in (floor_app, aria_app):
            stamp_receipts(application, received)
        floor = Side("floor (PTB + openai, nothing else)", floor_app, lambda _: OWNER)
        one_chat = Side("Aria, one chat (with history)", aria_app, lambda _: OWNER)
        fresh = Side("Aria, a new chat each turn", aria_app, lambda i: 50_000 + i)
        await _measure([floor, one_chat, fresh], host, received, turns, blocks)
        messages = host.longest_request()
    return report(floor, [one_chat, fresh], turns, messages)


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=500, help="turns per bot (default 500)")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.turns))
    print(result)
    return result


if __name__ == "__main__":
    main()
