"""Jobs restored from the ledger: reminders fire once, also after a restart; /digest and /cost arrive as photos."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from telegram import Bot

from aria.agent.state import Request
from aria.app import Aria
from aria.jobs import fire_reminder, restore_reminders
from aria.reminders import pending_reminders
from aria.telegram.sender import OutboxSender
from tests.conftest import OWNER, polling

MakeAria = Callable[..., Aria]
PNG = b"\x89PNG\r\n\x1a\n"


@asynccontextmanager
async def sender(aria: Aria, fake_telegram: Any) -> AsyncIterator[OutboxSender]:
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as bot:
        outbox_sender = OutboxSender(aria.outbox, bot, aria.ledger)
        yield outbox_sender


async def test_a_reminder_set_by_the_model_fires_once_after_a_restart(make_aria: MakeAria, fake_openai: Any,
                                                                      fake_telegram: Any) -> None:
    first = make_aria()
    scheduled: list[int] = []
    first.on_reminder = lambda reminder_id, due_at: scheduled.append(reminder_id)
    fake_openai.enqueue_tool_call("set_reminder", {"text": "rotate the keys", "in_minutes": 30})
    fake_openai.enqueue_text("I'll remind you in 30 minutes.")
    outcome = await first.agent.run(Request("remind me in 30 minutes to rotate the keys", chat_id=OWNER))
    assert outcome.text == "I'll remind you in 30 minutes." and scheduled == [1]

    second = make_aria()  # a new process on the same database
    assert restore_reminders(second, second.outbox) == 1
    assert second.scheduler.aps.get_job("reminder:1") is not None
    assert await fire_reminder(second, second.outbox, 1) == "reminder 1 sent"
    assert await fire_reminder(second, second.outbox, 1) == "reminder 1 already fired"
    async with sender(second, fake_telegram) as outbox_sender:
        assert await outbox_sender.flush() == 1
    assert fake_telegram.sent_texts(OWNER) == ["⏰ Reminder: rotate the keys"]
    assert pending_reminders(second.ledger) == []


async def test_digest_and_cost_commands_send_photos(make_aria: MakeAria, fake_telegram: Any,
                                                    fake_openai: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    await aria.agent.run(Request("hello", chat_id=OWNER))  # some activity to chart
    async with polling(aria):
        fake_telegram.add_message("/digest", user_id=OWNER)
        fake_telegram.add_message("/cost 3", user_id=OWNER)
        fake_telegram.add_message("/cost lots", user_id=OWNER)
        await fake_telegram.wait_for("sendPhoto", count=2, timeout=15)
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: "Usage: /cost" in c.params["text"])
    photos = fake_telegram.photos
    assert len(photos) == 2 and all(data.startswith(PNG) for _, data, _ in photos)
    captions = sorted(caption or "" for _, _, caption in photos)
    assert captions[0].startswith("Aria digest") and captions[1].startswith("Cost · last 3 days")
    assert aria.outbox.undelivered() == 0
