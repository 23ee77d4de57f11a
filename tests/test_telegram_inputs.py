"""What reaches Telegram beyond a plain private message: edits, groups, and the long poll's length."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
from sqlmodel import select

from aria.app import Aria
from aria.config import LONG_POLL_SECONDS, load_settings
from aria.errors import ConfigError
from aria.ledger import Event, Run
from aria.telegram.handlers import EDIT_ACKNOWLEDGEMENT
from aria.telegram.serve import serve
from tests.conftest import OWNER, polling

MakeAria = Callable[..., Aria]
GROUP = -4001


def _runs(aria: Aria) -> list[Run]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Run).where(Run.trigger != "schedule")).all())


def _refusals(aria: Aria) -> list[Event]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Event).where(Event.status == "refused")).all())


async def test_an_edited_message_is_acknowledged_and_not_answered_again(make_aria: MakeAria, fake_telegram: Any,
                                                                        fake_openai: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    async with polling(aria):
        fake_openai.enqueue_text("Disk is fine.")
        first = fake_telegram.make_message_update("how is the disk?", user_id=OWNER)
        fake_telegram.add_raw_update(first)
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Disk is fine.")
        edited = copy.deepcopy(first["message"])
        edited |= {"text": "how is the disk on db1?", "edit_date": edited["date"] + 5}
        fake_telegram.add_raw_update({"edited_message": edited})
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == EDIT_ACKNOWLEDGEMENT)
    assert len(fake_openai.completions) == 1
    assert [r.request for r in _runs(aria)] == ["how is the disk?"]


@pytest.mark.parametrize("kind", ["group", "supergroup"])
async def test_an_owner_message_in_a_group_is_ignored_and_recorded(make_aria: MakeAria, fake_telegram: Any,
                                                                   fake_openai: Any, kind: str) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    chat = GROUP if kind == "group" else -1004001
    async with polling(aria):
        fake_telegram.add_message("what did we spend today?", user_id=OWNER, chat_id=chat)
        fake_telegram.add_message("/status", user_id=OWNER, chat_id=chat)
        fake_telegram.add_message("/help", user_id=OWNER)  # a marker: once this is answered, the others were handled
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: str(c.params.get("chat_id")) == str(OWNER))
    assert fake_telegram.sent_texts(chat) == []
    assert fake_openai.completions == [] and _runs(aria) == []
    reasons = [e.reason for e in _refusals(aria)]
    assert reasons == [f"owner's message in a {kind} chat (ARIA_ALLOW_GROUPS is off)"] * 2


async def test_groups_are_answered_when_allowed(make_aria: MakeAria, fake_telegram: Any, fake_openai: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                     allow_groups=True)
    async with polling(aria):
        fake_openai.enqueue_text("Nothing spent.")
        fake_telegram.add_message("what did we spend today?", user_id=OWNER, chat_id=GROUP)
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Nothing spent.")
    assert len(fake_openai.completions) == 1 and _refusals(aria) == []


async def test_serving_long_polls_for_fifty_seconds(make_aria: MakeAria, fake_telegram: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(aria, webhook=False, stop=stop))  # as `aria run` does without a webhook
    (call,) = await fake_telegram.wait_for("getUpdates", predicate=lambda c: c.params.get("timeout"))
    stop.set()
    await asyncio.wait_for(serving, timeout=10)
    assert call.params["timeout"] == LONG_POLL_SECONDS == 50
    assert aria.settings.poll_stall_seconds >= 120


def test_a_stall_limit_not_above_the_long_poll_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARIA_POLL_STALL_SECONDS", "50")
    with pytest.raises(ConfigError, match="ARIA_POLL_STALL_SECONDS: must be above the 50 s long poll"):
        load_settings()
