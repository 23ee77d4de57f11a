"""Polling that stalls is restarted by the watchdog; an outage is one failure row with its duration."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlmodel import select
from telegram import Update
from telegram.ext import Application, ContextTypes, TypeHandler

from aria.app import Aria
from aria.ledger import Failure
from aria.telegram.watchdog import PollHealth, PollingWatchdog, WatchedRequest
from tests.conftest import eventually


class Polling:
    """A real Application polling the fake Bot API through a WatchedRequest, with its watchdog."""

    def __init__(self, aria: Aria, application: Application, watchdog: PollingWatchdog,  # type: ignore[type-arg]
                 seen: list[int]) -> None:
        self.aria, self.application, self.watchdog, self.seen = aria, application, watchdog, seen

    def failures(self) -> list[Failure]:
        with self.aria.ledger.read() as s:
            return list(s.exec(select(Failure).where(Failure.component == "telegram").order_by(Failure.id)))


@pytest.fixture
async def make_polling(make_aria: Callable[..., Aria], fake_telegram: Any) -> AsyncIterator[Callable[..., Any]]:
    started: list[Application] = []  # type: ignore[type-arg]

    async def make(stall_seconds: float) -> Polling:
        aria = make_aria()
        health = PollHealth(aria.ledger)
        application = (Application.builder().token(fake_telegram.token).base_url(fake_telegram.base_url)
                       .get_updates_request(WatchedRequest(health)).build())
        seen: list[int] = []

        async def note(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            seen.append(update.update_id)

        application.add_handler(TypeHandler(Update, note))
        watchdog = PollingWatchdog(application, aria.ledger, stall_seconds, health=health, timeout=0,
                                   poll_interval=0.05)
        await application.initialize()
        await application.start()
        await watchdog.start_polling()
        started.append(application)
        return Polling(aria, application, watchdog, seen)

    yield make
    for application in started:
        assert application.updater is not None
        if application.updater.running:
            await application.updater.stop()
        await application.stop()
        await application.shutdown()


async def test_a_stalled_poll_is_detected_and_polling_restarted(make_polling: Any, fake_telegram: Any) -> None:
    polling = await make_polling(stall_seconds=0.6)
    await fake_telegram.wait_for("getUpdates", count=3)
    assert await polling.watchdog.check() is False  # healthy polling is left alone
    polling.watchdog.schedule(every=0.2)  # the JobQueue drives the checks from here on
    fake_telegram.delay_next("getUpdates", 30)  # the next poll hangs (a half-open connection)
    await eventually(lambda: polling.watchdog.restarts == 1)
    (stalled,) = polling.failures()
    assert (stalled.error_type, stalled.handling) == ("PollingStalled", "retried")
    assert "polling restarted" in stalled.message
    update_id = fake_telegram.add_message("still there?")
    await eventually(lambda: update_id in polling.seen)  # the restarted poller delivers updates again


async def test_an_outage_is_one_failure_row_closed_with_its_duration(make_polling: Any, fake_telegram: Any) -> None:
    polling = await make_polling(stall_seconds=30)
    await fake_telegram.wait_for("getUpdates", count=2)
    fake_telegram.down()
    await eventually(lambda: len(polling.failures()) == 1)
    assert polling.watchdog.health.in_outage
    await asyncio.sleep(0.5)  # PTB keeps retrying with backoff meanwhile
    assert await polling.watchdog.check() is False  # a retrying loop is alive: no restart
    fake_telegram.up()
    await eventually(lambda: not polling.watchdog.health.in_outage)
    (outage,) = polling.failures()
    assert (outage.error_type, outage.handling) == ("PollingOutage", "retried")
    assert "NetworkError" in outage.message and "ended after" in outage.message
    failed = int(re.search(r"(\d+) failed poll", outage.message).group(1))  # type: ignore[union-attr]
    assert failed >= 2
    assert polling.watchdog.restarts == 0
    update_id = fake_telegram.add_message("back?")
    await eventually(lambda: update_id in polling.seen)
