"""End to end: a real python-telegram-bot Application polling the fake Bot API, answering via the fake model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import select
from telegram import Bot
from telegram.ext import Application

from aria.app import Aria
from aria.ledger import Event, Failure, Run, Spend
from aria.telegram.attachments import UNREADABLE
from aria.telegram.bot import build_application
from aria.telegram.intake import Intake
from aria.telegram.send import send_text
from tests.conftest import OWNER, STRANGER, eventually, polling

MakeAria = Callable[..., Aria]


@pytest.fixture
async def bot(make_aria: MakeAria, fake_telegram: Any) -> AsyncIterator[tuple[Aria, Application]]:  # type: ignore[type-arg]
    """Aria's Application polling the fake Bot API, as `aria run` would."""
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    async with polling(aria) as application:
        yield aria, application


def _count(aria: Aria, model: type[Any], *where: Any) -> int:
    with aria.ledger.read() as s:
        return int(s.exec(select(func.count()).select_from(model).where(*where)).one())


def _texts_to(fake_telegram: Any, chat_id: int) -> list[str]:
    return fake_telegram.sent_texts(chat_id)


async def test_owner_text_gets_an_answer_and_a_recorded_run(bot: Any, fake_telegram: Any, fake_openai: Any) -> None:
    aria, _ = bot
    fake_openai.enqueue_hang(1.5)  # a model that takes a moment: the owner sees "typing…" meanwhile
    fake_openai.default_text = "Disk is fine."
    fake_telegram.add_message("how is the disk?", user_id=OWNER)
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Disk is fine.")
    assert fake_telegram.calls_to("sendChatAction")[0].params["action"] == "typing"
    with aria.ledger.read() as s:
        (run,) = s.exec(select(Run).where(Run.trigger != "schedule")).all()
    assert (run.status, run.channel, run.chat_id, run.request) == ("ok", "telegram", OWNER, "how is the disk?")
    assert run.cost_micros > 0


async def test_stranger_gets_nothing_and_costs_nothing(bot: Any, fake_telegram: Any, fake_openai: Any) -> None:
    aria, _ = bot
    fake_telegram.add_message("hello?", user_id=STRANGER)
    fake_telegram.add_message("/help", user_id=OWNER)  # a marker: once this is answered, the first was handled
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: str(c.params.get("chat_id")) == str(OWNER))
    assert _texts_to(fake_telegram, STRANGER) == []
    assert fake_openai.completions == []
    assert _count(aria, Run, Run.trigger != "schedule") == 0
    assert _count(aria, Event, Event.status == "refused", Event.user_id == STRANGER) == 1


async def test_start_lists_commands_and_they_are_registered(bot: Any, fake_telegram: Any) -> None:
    fake_telegram.add_message("/start", user_id=OWNER)
    (call,) = await fake_telegram.wait_for("sendMessage")
    assert "/status" in call.params["text"] and "/skills" in call.params["text"]
    registered = {c["command"] for c in fake_telegram.commands_for()}
    assert {"help", "status", "skills"} <= registered


async def test_model_endpoint_down_gives_a_clear_message_and_failure_rows(bot: Any, fake_telegram: Any,
                                                                           fake_openai: Any) -> None:
    aria, _ = bot
    fake_openai.down()
    fake_telegram.add_message("hello", user_id=OWNER)
    (call,) = await fake_telegram.wait_for(
        "sendMessage", predicate=lambda c: "I don't know" in str(c.params.get("text")), timeout=15)
    assert "no model could answer" in call.params["text"]
    # Both models were tried and failed: the strong one cannot help, a plain retry (once the outage passes) can.
    markup = str(call.params.get("reply_markup"))
    assert "'Retry'" in markup and "strong" not in markup
    assert _count(aria, Failure, Failure.component == "llm") >= 2
    with aria.ledger.read() as s:
        (run,) = s.exec(select(Run).where(Run.trigger != "schedule")).all()
    assert run.status == "handoff"


async def test_long_answers_are_split_at_the_telegram_limit(bot: Any, fake_telegram: Any, fake_openai: Any) -> None:
    paragraph = "word " * 200
    fake_openai.enqueue_text("\n\n".join([paragraph] * 9), usage={"prompt_tokens": 50, "completion_tokens": 900})
    fake_telegram.add_message("write a lot", user_id=OWNER)
    calls = await fake_telegram.wait_for("sendMessage", count=3)
    texts = [c.params["text"] for c in calls]
    assert all(len(t) <= 4096 for t in texts)
    assert sum(t.count("word") for t in texts) == 1800


async def test_a_markdown_answer_arrives_rendered_as_html(bot: Any, fake_telegram: Any, fake_openai: Any) -> None:
    fake_openai.enqueue_text("**Disk** is fine:\n\n- `/` at 40% < 80%\n- *no* alerts & no errors\n\n"
                             "```sh\ndf -h /\n```")
    fake_telegram.add_message("how is the disk?", user_id=OWNER)
    (call,) = await fake_telegram.wait_for("sendMessage", predicate=lambda c: "Disk" in c.params.get("text", ""))
    assert call.params["parse_mode"] == "HTML"
    assert call.params["text"].startswith("<b>Disk</b> is fine:")
    (seen,) = [text for text in fake_telegram.message_texts(OWNER) if "Disk" in text]
    assert "**" not in seen and "```" not in seen and "<b>" not in seen
    assert "• / at 40% < 80%" in seen and "no alerts & no errors" in seen and "df -h /" in seen


async def test_a_long_markdown_answer_splits_between_paragraphs(bot: Any, fake_telegram: Any,
                                                                fake_openai: Any) -> None:
    paragraphs = [f"**Point {i}.** " + "This sentence explains it well. " * 10 for i in range(30)]
    fake_openai.enqueue_text("\n\n".join(p.strip() for p in paragraphs),
                             usage={"prompt_tokens": 50, "completion_tokens": 900})  # within max_tokens
    fake_telegram.add_message("explain at length", user_id=OWNER)
    await eventually(lambda: sum(t.count("Point") for t in fake_telegram.message_texts(OWNER)) == 30)
    sent = [c for c in fake_telegram.calls
            if c.ok and c.method != "sendMessageDraft" and "Point" in str(c.params.get("text", ""))]
    assert len(sent) >= 3
    for call in sent:
        assert call.params["parse_mode"] == "HTML"
        assert call.params["text"].startswith("<b>Point ") and call.params["text"].endswith("explains it well.")
    assert not any("**" in text for text in fake_telegram.message_texts(OWNER))


async def test_retry_button_reruns_the_request_on_the_strong_model(bot: Any, fake_telegram: Any,
                                                                   fake_openai: Any) -> None:
    aria, _ = bot
    fake_openai.enqueue_tool_call("handoff", {"reason": "not sure"}, model="gpt-4o-mini")
    fake_openai.enqueue_tool_call("handoff", {"reason": "still not sure"}, model="gpt-4o")
    fake_openai.enqueue_text("Strong answer.", model="gpt-4o")
    fake_telegram.add_message("tricky one", user_id=OWNER)
    (handoff,) = await fake_telegram.wait_for("sendMessage", predicate=lambda c: "I don't know" in c.params["text"])
    with aria.ledger.read() as s:
        first_run = s.exec(select(Run).where(Run.trigger != "schedule")).one()
    fake_telegram.press_button(f"retry:strong:{first_run.id}", user_id=OWNER, message_id=handoff.result["message_id"])
    fake_telegram.press_button(f"retry:strong:{first_run.id}", user_id=OWNER, message_id=handoff.result["message_id"])
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Strong answer.")
    answers = await fake_telegram.wait_for("answerCallbackQuery", count=2)
    assert sorted(str(a.params.get("text")) for a in answers) == ["Already retried.", "Retrying…"]
    assert _count(aria, Run, Run.trigger != "schedule") == 2


async def test_garbage_and_stranger_button_presses_are_refused_quietly(bot: Any, fake_telegram: Any) -> None:
    aria, _ = bot
    fake_telegram.press_button("\x00garbage:::", user_id=OWNER)
    fake_telegram.press_button("retry:strong:999999", user_id=OWNER)
    fake_telegram.press_button("retry:strong:1", user_id=STRANGER)
    answers = await fake_telegram.wait_for("answerCallbackQuery", count=3)
    assert all("not" in str(a.params.get("text")).lower() for a in answers)
    assert _count(aria, Event, Event.user_id == STRANGER) == 1
    assert _texts_to(fake_telegram, STRANGER) == [] and _count(aria, Run, Run.trigger != "schedule") == 0


async def test_non_text_messages_get_a_plain_explanation(bot: Any, fake_telegram: Any) -> None:
    update = fake_telegram.make_message_update("x", user_id=OWNER)
    message = update["message"]
    del message["text"]
    message.pop("entities", None)
    message["sticker"] = {"file_id": "s1", "file_unique_id": "u1", "type": "regular", "width": 512, "height": 512,
                          "is_animated": False, "is_video": False}
    fake_telegram.add_raw_update(update)
    (call,) = await fake_telegram.wait_for("sendMessage")
    assert call.params["text"] == UNREADABLE  # what it can read: text, captions, text files, voice notes


async def test_rejected_markup_is_resent_as_plain_text(fake_telegram: Any) -> None:
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as tg:
        (sent,) = await send_text(tg, OWNER, "<b>unclosed bold", parse_mode="HTML")
    assert sent.text == "<b>unclosed bold"
    attempts = fake_telegram.calls_to("sendMessage")
    assert [c.ok for c in attempts] == [False, True]


async def test_stopping_lets_an_in_flight_run_finish(make_aria: MakeAria, fake_telegram: Any,
                                                     fake_openai: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url)
    application = build_application(aria)
    await application.initialize()
    await application.start()
    assert application.updater is not None
    await application.updater.start_polling(timeout=1, poll_interval=0)
    fake_openai.enqueue_hang(1.0)  # the model takes a second; the stop signal comes meanwhile
    fake_telegram.add_message("slow question", user_id=OWNER)
    await fake_openai.wait_for_requests(1)
    await application.updater.stop()
    await application.stop()  # what SIGTERM triggers in run_polling
    await application.shutdown()
    with aria.ledger.read() as s:
        (run,) = s.exec(select(Run).where(Run.trigger != "schedule")).all()
    assert run.status == "ok" and run.ended_at is not None
    assert fake_telegram.sent_texts(OWNER)[-1] == "OK."


async def test_a_cancelled_run_is_marked_interrupted(make_aria: MakeAria, fake_openai: Any) -> None:
    import asyncio

    from aria.agent.state import Request

    aria = make_aria()
    fake_openai.enqueue_hang(5.0)
    task = asyncio.create_task(aria.agent.run(Request("slow")))
    await fake_openai.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with aria.ledger.read() as s:
        (run,) = s.exec(select(Run).where(Run.trigger != "schedule")).all()
        (spend,) = s.exec(select(Spend)).all()
    assert (run.status, run.stop_reason) == ("interrupted", "stopping")  # the next start resumes or offers a Retry
    # The stream was closed, so the server stops: the bound of the prompt sent is charged (nothing arrived),
    # marked as an estimate, instead of the whole reservation.
    assert (spend.status, spend.price_known, spend.completion_tokens) == ("settled", False, 0)
    assert 0 < spend.cost_micros < spend.reserved_micros and spend.prompt_tokens > 0
    assert "estimated" in (spend.usage_json or "")
    await eventually(lambda: fake_openai.completions[0].closed_early)


async def test_telegram_429_on_a_reply_is_delivered_after_the_wait(bot: Any, fake_telegram: Any,
                                                                   fake_openai: Any) -> None:
    fake_telegram.fail_next("sendMessage", status=429, retry_after=1)
    fake_openai.enqueue_text("Worth the wait.")
    fake_telegram.add_message("hello", user_id=OWNER)
    calls = await fake_telegram.wait_for("sendMessage", count=2, timeout=10)
    assert [c.ok for c in calls] == [False, True] and calls[1].params["text"] == "Worth the wait."
    assert calls[1].at - calls[0].at >= 1.0  # the rate limiter honoured retry_after


async def test_a_reply_telegram_keeps_refusing_goes_to_the_outbox(bot: Any, fake_telegram: Any,
                                                                  fake_openai: Any) -> None:
    aria, _ = bot
    fake_telegram.fail_next("sendMessage", status=502, times=1)
    fake_openai.enqueue_text("Delivered later.")
    fake_telegram.add_message("hello", user_id=OWNER)
    await fake_telegram.wait_for("sendMessage", count=2, timeout=15)
    assert fake_telegram.sent_texts(OWNER) == ["Delivered later."]
    assert _count(aria, Failure, Failure.component == "outbox") == 1
    await eventually(lambda: aria.outbox.undelivered() == 0)  # marked once Telegram's answer is back


async def test_a_message_whose_handler_fails_is_not_handled_again_at_the_next_start(
        bot: Any, fake_telegram: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    aria, _ = bot

    async def broken(*args: Any, **kwargs: Any) -> list[Any]:
        raise RuntimeError("a bug in a command")

    monkeypatch.setattr("aria.commands.answer", broken)
    fake_telegram.add_message("/status", user_id=OWNER)
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: "Something went wrong" in c.params["text"])
    await eventually(lambda: Intake(aria.ledger).unprocessed() == [])  # the next start hands it over no more
    assert _count(aria, Failure) >= 1
