"""The outbox: proactive messages are delivered once, through outages, flood control and 5xx, against the fake Bot
API over real HTTP."""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import select
from telegram import Bot

from aria.agent.outcome import Action
from aria.clock import ManualClock
from aria.ledger import Failure, Ledger
from aria.ledger.models import Outbox as OutboxRow
from aria.outbox import RETRY_BASE, RETRY_CAP, Outbox, backoff_seconds
from aria.telegram.sender import OutboxSender
from tests.conftest import OWNER, SleepRecorder
from tests.fakes import FakeTelegram


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid PNG (signature, IHDR, IDAT, IEND) of the given size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\xff\xff" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture
async def bot(fake_telegram: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as real_bot:
        yield real_bot


@pytest.fixture
def outbox(ledger: Ledger) -> Outbox:
    return Outbox(ledger)


@pytest.fixture
def sender(outbox: Outbox, bot: Bot, ledger: Ledger, sleeps: SleepRecorder) -> OutboxSender:
    return OutboxSender(outbox, bot, ledger, sleep=sleeps)


def row(ledger: Ledger, outbox_id: int) -> OutboxRow:
    with ledger.read() as session:
        found = session.get(OutboxRow, outbox_id)
        assert found is not None
        return found


def failures(ledger: Ledger) -> list[Failure]:
    with ledger.read() as session:
        return list(session.exec(select(Failure).where(Failure.component == "outbox").order_by(Failure.id)))


def sent_ok(fake: FakeTelegram, method: str) -> list[object]:
    return [call for call in fake.calls_to(method) if call.ok]


async def test_bot_api_down_for_a_while_then_message_delivered_once(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger, clock: ManualClock) -> None:
    fake_telegram.down()
    outbox_id = outbox.enqueue(OWNER, "digest ready", purpose="digest")
    assert outbox_id is not None

    assert await sender.flush() == 0
    failed = row(ledger, outbox_id)
    assert failed.delivered_at is None and failed.attempts == 1 and failed.last_error
    retry_in = (failed.next_attempt_at - clock.now()).total_seconds()  # type: ignore[operator]
    assert RETRY_BASE / 2 <= retry_in <= RETRY_BASE
    assert [(f.error_type, f.handling) for f in failures(ledger)] == [("NetworkError", "retried")]

    clock.advance(retry_in + 1)
    assert await sender.flush() == 0  # still down: backs off again
    assert row(ledger, outbox_id).attempts == 2

    fake_telegram.up()
    assert await sender.flush() == 0  # up again, but the row waits for its next attempt time
    clock.advance(RETRY_CAP)
    assert await sender.flush() == 1
    assert await sender.flush() == 0
    assert fake_telegram.sent_texts(OWNER) == ["digest ready"]
    delivered = row(ledger, outbox_id)
    assert delivered.delivered_at is not None and delivered.attempts == 3
    assert delivered.message_id == sent_ok(fake_telegram, "sendMessage")[0].result["message_id"]  # type: ignore[attr-defined]
    assert outbox.undelivered() == 0


async def test_429_retry_after_is_waited_then_the_same_message_sent(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger,
        sleeps: SleepRecorder) -> None:
    fake_telegram.fail_next("sendMessage", 429, retry_after=7)
    outbox.enqueue(OWNER, "budget alert", purpose="alert")

    assert await sender.flush() == 1

    assert sleeps.waits == [7.0]
    calls = fake_telegram.calls_to("sendMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].params["text"] == calls[1].params["text"] == "budget alert"
    assert [f.error_type for f in failures(ledger)] == ["RetryAfter"]


async def test_5xx_is_retried_with_growing_jittered_backoff(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger, clock: ManualClock) -> None:
    fake_telegram.fail_next("sendMessage", 502, times=3)
    outbox_id = outbox.enqueue(OWNER, "reminder: call Bob")
    assert outbox_id is not None
    waits = []
    for attempt in range(1, 4):
        assert await sender.flush() == 0
        current = row(ledger, outbox_id)
        assert current.attempts == attempt
        wait = (current.next_attempt_at - clock.now()).total_seconds()  # type: ignore[operator]
        ceiling = RETRY_BASE * 2 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling
        waits.append(wait)
        clock.advance(wait)

    assert await sender.flush() == 1
    assert len(failures(ledger)) == 3
    assert fake_telegram.sent_texts(OWNER) == ["reminder: call Bob"]
    assert max(backoff_seconds(n) for n in range(1, 40)) <= RETRY_CAP


async def test_dedupe_key_enqueues_and_sends_once(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger) -> None:
    first = outbox.enqueue(OWNER, "approve restart?", dedupe_key="approval:7")
    second = outbox.enqueue(OWNER, "approve restart?", dedupe_key="approval:7")

    assert first is not None and second is None
    assert await sender.flush() == 1
    assert await sender.flush() == 0
    assert fake_telegram.sent_texts(OWNER) == ["approve restart?"]
    with ledger.read() as session:
        assert len(session.exec(select(OutboxRow)).all()) == 1


async def test_long_text_is_split_with_buttons_under_the_last_part(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger) -> None:
    paragraphs = [f"paragraph {n}: " + "word " * 150 for n in range(12)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 2 * 4096
    outbox_id = outbox.enqueue(OWNER, text, actions=[Action("Retry", "retry:strong:9")])
    assert outbox_id is not None

    assert await sender.flush() == 1

    calls = sent_ok(fake_telegram, "sendMessage")
    assert len(calls) == 3
    assert all(len(c.params["text"]) <= 4096 for c in calls)  # type: ignore[attr-defined]
    assert " ".join(" ".join(c.params["text"] for c in calls).split()) == " ".join(text.split())  # type: ignore[attr-defined]
    assert [("reply_markup" in c.params) for c in calls] == [False, False, True]  # type: ignore[attr-defined]
    assert calls[-1].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "retry:strong:9"  # type: ignore[attr-defined]
    assert row(ledger, outbox_id).message_id == calls[-1].result["message_id"]  # type: ignore[attr-defined]


async def test_photo_carries_the_caption_and_longer_text_follows(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    png = tiny_png()
    head = "Spend today: $0.52 of $2.00\n" * 20
    tail = "Failures: none\n" * 80
    outbox.enqueue(OWNER, head + "\n" + tail, photo=png, purpose="digest")

    assert await sender.flush() == 1

    [(chat, data, caption)] = fake_telegram.photos
    assert chat == OWNER and data == png
    assert caption is not None and len(caption) <= 1024 and caption == head.strip()
    assert fake_telegram.sent_texts(OWNER) == [tail.strip()]


async def test_short_photo_caption_is_one_message(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    outbox.enqueue(OWNER, "No activity yet.", photo=tiny_png())
    assert await sender.flush() == 1
    assert [caption for _, _, caption in fake_telegram.photos] == ["No activity yet."]
    assert fake_telegram.calls_to("sendMessage") == []


async def test_a_retry_resumes_after_the_parts_already_delivered(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, clock: ManualClock) -> None:
    outbox.enqueue(OWNER, "caption\n\n" + "detail " * 200, photo=tiny_png())
    outbox.enqueue(OWNER, "x" * 1200, photo=tiny_png())  # same chat: must wait behind the first
    fake_telegram.fail_next("sendMessage", 500)

    assert await sender.flush() == 0
    assert len(sent_ok(fake_telegram, "sendPhoto")) == 1  # the second row did not jump the queue
    clock.advance(RETRY_CAP)
    assert await sender.flush() == 2

    assert len(sent_ok(fake_telegram, "sendPhoto")) == 2  # the first photo was not sent again
    assert len(sent_ok(fake_telegram, "sendMessage")) == 2


async def test_refused_message_is_parked_visible_and_never_retried(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger, clock: ManualClock) -> None:
    fake_telegram.block_user(OWNER)
    outbox_id = outbox.enqueue(OWNER, "hello")
    assert outbox_id is not None

    assert await sender.flush() == 0
    clock.advance(days=1)
    assert await sender.flush() == 0

    assert len(fake_telegram.calls_to("sendMessage")) == 1
    parked = row(ledger, outbox_id)
    assert parked.delivered_at is None and parked.next_attempt_at is None
    assert parked.last_error is not None and parked.last_error.startswith("Forbidden")
    assert outbox.undelivered() == 1 and outbox.refused_count() == 1
    assert [r.id for r in outbox.refused()] == [outbox_id]
    assert [(f.error_type, f.handling) for f in failures(ledger)] == [("Forbidden", "recorded")]
    assert outbox.next_due(clock.now()) is None


async def test_unparseable_markup_is_delivered_as_plain_text(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    outbox.enqueue(OWNER, "<b>disk 91% full", parse_mode="HTML")

    assert await sender.flush() == 1

    assert [c.status for c in fake_telegram.calls_to("sendMessage")] == [400, 200]
    assert "parse_mode" not in fake_telegram.calls_to("sendMessage")[1].params


async def test_an_answer_is_rendered_from_markdown_and_the_stored_text_stays_markdown(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender, ledger: Ledger) -> None:
    outbox_id = outbox.enqueue(OWNER, "**Disk** at 91% & rising", purpose="answer")
    assert outbox_id is not None

    assert await sender.flush() == 1

    (call,) = sent_ok(fake_telegram, "sendMessage")
    assert (call.params["text"], call.params["parse_mode"]) == ("<b>Disk</b> at 91% &amp; rising", "HTML")  # type: ignore[attr-defined]
    assert row(ledger, outbox_id).text == "**Disk** at 91% & rising"


async def test_an_alert_is_sent_as_written(fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    outbox.enqueue(OWNER, "disk_usage_high on *host*", purpose="alert")

    assert await sender.flush() == 1

    (call,) = sent_ok(fake_telegram, "sendMessage")
    assert call.params["text"] == "disk_usage_high on *host*" and "parse_mode" not in call.params  # type: ignore[attr-defined]


async def test_a_rendered_answer_telegram_cannot_parse_arrives_as_its_plain_words(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    fake_telegram.fail_next("sendMessage", 400, description="Bad Request: can't parse entities: unsupported tag")
    outbox.enqueue(OWNER, "**Disk** at 91% & `rising`", purpose="answer")

    assert await sender.flush() == 1

    calls = fake_telegram.calls_to("sendMessage")
    assert [c.status for c in calls] == [400, 200]
    assert calls[1].params["text"] == "Disk at 91% & rising" and "parse_mode" not in calls[1].params


async def test_a_digest_photo_caption_shows_its_text_exactly_and_the_rest_follows(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    text = "\n\n".join(f"Section {n}: tool run_shell_cmd failed on /tmp/*_old_* <x> & " + "detail " * 40
                        for n in range(8))
    outbox.enqueue(OWNER, text, photo=tiny_png(), purpose="digest")

    assert await sender.flush() == 1

    (photo,) = sent_ok(fake_telegram, "sendPhoto")
    assert photo.params["parse_mode"] == "HTML" and len(photo.params["caption"]) <= 1024  # type: ignore[attr-defined]
    texts = [c.params["text"] for c in sent_ok(fake_telegram, "sendMessage")]  # type: ignore[attr-defined]
    assert texts and all(t.startswith("Section ") for t in texts)
    seen = [photo.result["caption"], *(c.result["text"] for c in sent_ok(fake_telegram, "sendMessage"))]  # type: ignore[attr-defined]
    assert " ".join(" ".join(seen).split()) == " ".join(text.split())


async def test_an_approval_request_shows_the_command_exactly(
        fake_telegram: FakeTelegram, outbox: Outbox, sender: OutboxSender) -> None:
    text = "Approval needed: shell `rm -rf /tmp/*.log *now*` & <more>\nWhy: risky."
    outbox.enqueue(OWNER, text, purpose="approval")

    assert await sender.flush() == 1

    (call,) = sent_ok(fake_telegram, "sendMessage")
    assert call.params["parse_mode"] == "HTML" and call.result["text"] == text  # type: ignore[attr-defined]


async def test_background_sender_wakes_on_enqueue_and_at_the_retry_time(
        fake_telegram: FakeTelegram, bot: Bot, tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "live.db")  # the real clock: the task sleeps until next_attempt_at
    outbox = Outbox(ledger)
    sender = OutboxSender(outbox, bot, ledger, retry_base=0.05)
    await sender.start()
    try:
        fake_telegram.fail_next("sendMessage", 503)
        outbox.enqueue(OWNER, "woken by the enqueue")
        await fake_telegram.wait_for("sendMessage", 2, timeout=5)
        await fake_telegram.wait_for("sendMessage", 1, timeout=5, predicate=lambda c: c.ok)
    finally:
        await sender.stop()
    assert fake_telegram.sent_texts(OWNER) == ["woken by the enqueue"]
    assert outbox.undelivered() == 0
    assert outbox.next_due(ledger.now()) is None  # nothing left: the task waits for a kick, no timer


async def test_stop_lets_the_message_in_flight_finish_and_be_marked(
        fake_telegram: FakeTelegram, bot: Bot, tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "live.db")
    outbox = Outbox(ledger)
    sender = OutboxSender(outbox, bot, ledger)
    await sender.start()
    fake_telegram.delay_next("sendMessage", 0.3)
    outbox.enqueue(OWNER, "sent while stopping")
    await fake_telegram.wait_for("sendMessage", 1)  # the request reached Telegram; its answer is slow

    await sender.stop()

    assert outbox.undelivered() == 0  # marked, so a restart will not send it again
    assert fake_telegram.sent_texts(OWNER) == ["sent while stopping"]


def test_enqueue_needs_text_or_photo(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="text, a photo or a document"):
        outbox.enqueue(OWNER, "   ")


def test_pending_is_oldest_first_and_skips_delivered(outbox: Outbox, ledger: Ledger, clock: ManualClock) -> None:
    first = outbox.enqueue(OWNER, "one")
    clock.advance(1)
    second = outbox.enqueue(OWNER + 1, "two")
    assert first is not None and second is not None
    outbox.mark_delivered(first, 11)
    outbox.mark_delivered(first, 99)  # a second mark changes nothing

    assert [r.id for r in outbox.pending(clock.now())] == [second]
    assert row(ledger, first).message_id == 11
    outbox.mark_failed(second, "NetworkError: down", clock.now() + dt.timedelta(seconds=30))
    assert outbox.pending(clock.now()) == []
    assert outbox.next_due(clock.now()) == clock.now() + dt.timedelta(seconds=30)
