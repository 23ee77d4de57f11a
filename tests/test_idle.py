"""Idle costs nothing: a day with nobody talking to Aria makes no model calls, and in webhook mode no Bot API calls."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from aria.app import Aria
from aria.clock import ManualClock
from tests.conftest import OWNER
from tests.test_web import running_webhook_app, webhook_settings

DAY = dt.timedelta(days=1)
MAX_RUNS_PER_JOB = 300  # enough to cover every cron time of a day; interval jobs repeat the same work


def fire_times(trigger: Any, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """When an APScheduler trigger fires between start and end."""
    times: list[dt.datetime] = []
    previous, now = None, start
    while len(times) < MAX_RUNS_PER_JOB:
        when = trigger.get_next_fire_time(previous, now)
        if when is None or when > end:
            break
        times.append(when)
        previous, now = when, when + dt.timedelta(microseconds=1)
    return times


async def test_an_idle_day_in_webhook_mode_makes_no_model_and_no_bot_api_calls(
        make_aria: Callable[..., Aria], fake_telegram: Any, fake_openai: Any) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    aria = make_aria(clock=clock, **webhook_settings(fake_telegram))
    async with running_webhook_app(aria):
        fake_telegram.clear_calls()  # start-up (getMe, setMyCommands) is not idle time
        await asyncio.sleep(1.0)  # real idle time: no poll, no keep-alive, no job traffic
        assert fake_telegram.calls == []

        start = clock.now()
        executed = 0
        for job in aria.scheduler.aps.get_jobs():  # every job registered at start-up, run as the day would
            for when in fire_times(job.trigger, start, start + DAY):
                clock.set(when)
                await job.func(*job.args, **job.kwargs)
                executed += 1
        clock.set(start + DAY)

    assert fake_openai.completions == []
    # Scheduled output to the owner (a digest) is not an idle cost; anything else on the Bot API would be.
    other = [c for c in fake_telegram.calls
             if not (c.method in ("sendMessage", "sendPhoto") and str(c.params.get("chat_id")) == str(OWNER))
             and c.method not in ("deleteWebhook", "close")]
    assert other == [], f"{executed} scheduled executions made Bot API calls: {other}"
