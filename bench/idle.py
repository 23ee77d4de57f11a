"""Idle calls: outbound Bot API and model calls while nobody talks to Aria, polling vs webhook mode, against a naive
one-second poller as the baseline.

Time is scaled so the run stays short: every interval is divided by `--scale` (a 10 s long poll becomes 1 s, the
naive 1 s poll 0.1 s), and the calls counted over the window are reported per simulated ten minutes and per hour.
All three run at once against their own fake Bot API; Aria runs through the same `serve` loop as `aria run`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

from telegram import Bot

from aria.app import Aria
from aria.telegram.serve import serve
from aria.telegram.watchdog import DEFAULT_POLL_TIMEOUT
from bench.common import settings_for, table
from tests.fakes import FakeOpenAI, FakeTelegram

NAIVE_INTERVAL = 1.0


async def _aria_idle(webhook: bool, window: float, scale: int, folder: Path) -> tuple[int, int]:
    """Bot API and model calls Aria makes during an idle window (start-up excluded)."""
    with FakeTelegram() as telegram, FakeOpenAI() as model:
        extra = {"webhook_url": "https://aria.example.test", "webhook_secret": "idle-bench-secret"} if webhook else {}
        settings = settings_for(folder, model.base_url, telegram_bot_token=telegram.token,
                                telegram_api_url=telegram.api_url, **extra)
        aria = Aria.build(settings)
        stop = asyncio.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        task = asyncio.create_task(serve(aria, webhook=webhook, stop=stop, sock=sock if webhook else None,
                                         poll_timeout=max(1, DEFAULT_POLL_TIMEOUT // scale)))
        await asyncio.sleep(1.0)  # start-up: getMe, setMyCommands, setWebhook or the first poll
        telegram.clear_calls()
        await asyncio.sleep(window)
        calls, completions = len(telegram.calls), len(model.completions)
        stop.set()
        await task
        sock.close()
    return calls, completions


async def _naive_idle(window: float, scale: int) -> int:
    """A bot that asks for updates every second, without long polling."""
    with FakeTelegram() as telegram:
        async with Bot(telegram.token, base_url=telegram.base_url) as bot:
            telegram.clear_calls()
            end, offset = time.monotonic() + window, 0
            while time.monotonic() < end:
                updates = await bot.get_updates(offset=offset, timeout=0)
                if updates:
                    offset = updates[-1].update_id + 1
                await asyncio.sleep(NAIVE_INTERVAL / scale)
            return len(telegram.calls)


async def measure(window: float, scale: int) -> str:
    """Run the three idle windows at once and tabulate them."""
    with tempfile.TemporaryDirectory() as polling_dir, tempfile.TemporaryDirectory() as webhook_dir:
        (polling, polling_model), (hooked, hooked_model), naive = await asyncio.gather(
            _aria_idle(False, window, scale, Path(polling_dir)), _aria_idle(True, window, scale, Path(webhook_dir)),
            _naive_idle(window, scale))
    simulated = window * scale

    def per(count: int, seconds: float) -> str:
        return f"{count * seconds / simulated:.0f}"

    rows = [
        ("window", f"{window:g} s real = {simulated / 60:g} simulated minutes (intervals divided by {scale})"),
        ("Aria, long polling: Bot API calls per 10 min / per hour", f"{per(polling, 600)} / {per(polling, 3600)}"),
        ("Aria, webhook: Bot API calls per 10 min / per hour", f"{per(hooked, 600)} / {per(hooked, 3600)}"),
        ("baseline, naive 1 s poller: Bot API calls per 10 min / per hour", f"{per(naive, 600)} / {per(naive, 3600)}"),
        ("Aria, model calls while idle (polling / webhook)", f"{polling_model} / {hooked_model}"),
    ]
    return table(rows)


def main(argv: list[str] | None = None) -> str:
    """Measure and print; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=30.0, help="real seconds of idle time per mode")
    parser.add_argument("--scale", type=int, default=10, help="how much faster than real time the intervals run")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.window, args.scale))
    print(result)
    return result


if __name__ == "__main__":
    main()
