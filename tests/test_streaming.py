"""Streamed model calls against the fake server: slow models finish, stalled ones are closed, charged for what
arrived and not sent again to the same endpoint."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.ledger import Failure, Run, Spend
from tests.conftest import OWNER, eventually, polling

MakeAria = Callable[..., Aria]
SLOW_ANSWER = " ".join(f"word{i}" for i in range(40))


def _spend(aria: Aria, run_id: int | None) -> list[Spend]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Spend).where(Spend.run_id == run_id)))


async def test_a_slow_model_that_keeps_writing_is_not_cut_off(make_aria: MakeAria, fake_openai: Any) -> None:
    # 40 pieces at 40 ms: 1.6 s in all, far past both windows, but never silent for long.
    fake_openai.token_delay = 0.04
    fake_openai.enqueue_text(SLOW_ANSWER, usage={"prompt_tokens": 321, "completion_tokens": 57})
    aria = make_aria(llm_first_token_seconds=0.5, llm_silence_seconds=0.5)
    seen: list[str] = []
    outcome = await aria.agent.run(Request("tell me a long story"), _Recorder(seen))
    assert (outcome.status, outcome.text) == ("ok", SLOW_ANSWER)
    (request,) = fake_openai.completions
    assert request.body["stream"] is True and request.body["stream_options"] == {"include_usage": True}
    # The owner's view saw the answer grow, piece by piece.
    assert len(seen) >= 20 and seen[-1] == SLOW_ANSWER and all(SLOW_ANSWER.startswith(s) for s in seen)
    # The spend row is exactly the usage the server reported in its last chunk.
    (spend,) = _spend(aria, outcome.run_id)
    assert (spend.status, spend.price_known, spend.prompt_tokens, spend.completion_tokens) == ("settled", True, 321, 57)


async def test_no_first_token_closes_the_stream_and_falls_back_without_resending(
        make_aria: MakeAria, fake_openai: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake_openai.enqueue_hang(10.0, model="gpt-4o-mini")
    fake_openai.enqueue_text("from the strong model", model="gpt-4o")
    aria = make_aria(llm_first_token_seconds=0.3, llm_silence_seconds=0.3)
    with caplog.at_level(logging.WARNING, logger="aria.llm.client"):
        outcome = await aria.agent.run(Request("hello"))
    assert (outcome.status, outcome.text) == ("ok", "from the strong model")
    # Sent once to the stalled model (no identical resend), and its connection dropped so the server stops.
    assert len(fake_openai.requests_for("gpt-4o-mini")) == 1
    await eventually(lambda: fake_openai.requests_for("gpt-4o-mini")[0].closed_early)
    assert any("no first token within 0.3 s" in r.getMessage() and "fell back" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    with aria.ledger.read() as s:
        (failure,) = s.exec(select(Failure).where(Failure.run_id == outcome.run_id)).all()
    assert failure.handling == "fell_back" and "stalled" in failure.message
    stalled = next(s for s in _spend(aria, outcome.run_id) if s.model == "gpt-4o-mini")
    # Nothing arrived: the bound of the prompt sent is charged, marked as an estimate; not the whole reservation.
    assert (stalled.status, stalled.price_known, stalled.completion_tokens) == ("settled", False, 0)
    assert stalled.cost_micros < stalled.reserved_micros


async def test_silence_mid_answer_hands_off_and_charges_what_arrived(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_stall(SLOW_ANSWER, after=5, seconds=10.0)
    aria = make_aria(llm_first_token_seconds=1.0, llm_silence_seconds=0.3, model_strong="gpt-4o-mini")
    outcome = await aria.agent.run(Request("hello"))
    assert outcome.status == "handoff" and "silent for 0.3 s" in outcome.text
    assert len(fake_openai.completions) == 1  # not sent again to the same endpoint
    await eventually(lambda: fake_openai.completions[0].closed_early)
    (spend,) = _spend(aria, outcome.run_id)
    assert spend.price_known is False and 5 <= spend.completion_tokens < 40


async def test_a_server_that_ignores_stream_and_answers_json_still_works(make_aria: MakeAria,
                                                                          fake_openai: Any) -> None:
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "plain"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}
    fake_openai.enqueue_raw(200, json.dumps(body).encode(), {"content-type": "application/json"})
    aria = make_aria()
    outcome = await aria.agent.run(Request("hello"))
    assert (outcome.status, outcome.text) == ("ok", "plain")
    (spend,) = _spend(aria, outcome.run_id)
    assert (spend.prompt_tokens, spend.completion_tokens, spend.price_known) == (12, 1, True)


class _Recorder:
    """A run's live view: records each draft of the answer."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def note(self, text: str) -> None:
        return None

    def draft(self, text: str) -> None:
        self.seen.append(text)


# -- the owner sees the answer as it is written ------------------------------------------------------------------


@pytest.fixture
async def streaming_bot(make_aria: MakeAria, fake_telegram: Any, fake_openai: Any) -> AsyncIterator[Aria]:
    """Aria polling the fake Bot API, with a model that writes a word every 30 ms and previews every 0.2 s."""
    fake_openai.token_delay = 0.03
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                     preview_seconds=0.2)
    async with polling(aria):
        yield aria


async def test_a_private_chat_sees_drafts_then_one_normal_message(streaming_bot: Aria, fake_telegram: Any,
                                                                 fake_openai: Any) -> None:
    answer = "**Disk** is fine. " + SLOW_ANSWER  # Markdown: drafts and the answer are rendered
    fake_openai.enqueue_text(answer)
    fake_telegram.add_message("how is the disk?", user_id=OWNER)
    (final,) = await fake_telegram.wait_for("sendMessage", predicate=lambda c: "word39" in c.params.get("text", ""),
                                            timeout=10)
    assert final.params["text"].startswith("<b>Disk</b> is fine.") and final.params["parse_mode"] == "HTML"
    drafts = [text for chat, _, text in fake_telegram.drafts if chat == OWNER]
    # 44 pieces over ~1.3 s, shown at most every 0.2 s: several drafts, each longer than the last, all bounded.
    assert 3 <= len(drafts) <= 10
    assert all(a != b and b.startswith(a[: len(a) - 8]) for a, b in itertools.pairwise(drafts))
    assert drafts[0].startswith("Disk") and not any("*" in d for d in drafts)  # rendered, no literal asterisks
    assert len({draft_id for _, draft_id, _ in fake_telegram.drafts}) == 1
    assert fake_telegram.calls_to("editMessageText") == []


async def test_without_drafts_one_message_is_edited_at_a_bounded_rate(streaming_bot: Aria, fake_telegram: Any,
                                                                     fake_openai: Any) -> None:
    fake_telegram.drafts_supported = False  # an older Bot API server or an emulator without sendMessageDraft
    fake_openai.enqueue_text(SLOW_ANSWER)
    fake_telegram.add_message("tell me", user_id=OWNER)
    await eventually(lambda: any(text == SLOW_ANSWER for text in fake_telegram.message_texts(OWNER)), timeout=10)
    edits = [c for c in fake_telegram.calls_to("editMessageText") if c.ok]
    assert len(edits) >= 3
    assert len({c.params["message_id"] for c in edits}) == 1  # one message, edited; the answer replaces it
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits[:-1])]
    assert min(gaps) >= 0.15  # bounded rate (the last edit is the final answer, sent when the run ends)
    assert fake_telegram.message_texts(OWNER)[-1] == SLOW_ANSWER
    assert len(fake_telegram.calls_to("sendMessageDraft")) == 1  # tried once, then remembered as unavailable


async def test_a_429_on_a_draft_is_waited_out(streaming_bot: Aria, fake_telegram: Any, fake_openai: Any) -> None:
    fake_openai.token_delay = 0.05
    fake_telegram.fail_next("sendMessageDraft", 429, retry_after=1)
    fake_openai.enqueue_text(SLOW_ANSWER)
    fake_telegram.add_message("tell me", user_id=OWNER)
    await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == SLOW_ANSWER, timeout=10)
    calls = fake_telegram.calls_to("sendMessageDraft")
    assert calls[0].status == 429 and calls[1].at - calls[0].at >= 0.95
    assert fake_telegram.drafts  # previews carried on after the wait


# -- answers cut at the output limit ------------------------------------------------------------------------------


async def test_a_cut_answer_says_so_and_continue_carries_on_the_same_run(make_aria: MakeAria, fake_telegram: Any,
                                                                         fake_openai: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                     max_output_tokens=20, min_output_tokens=8)
    first_part = "Step one: check the disk with df. " * 10  # far over 20 tokens: the server cuts it
    fake_openai.enqueue_text(first_part)
    fake_openai.enqueue_text("Step two: clean the logs.")
    async with polling(aria):
        fake_telegram.add_message("how do I free disk space?", user_id=OWNER)
        (cut,) = await fake_telegram.wait_for("sendMessage", predicate=lambda c: "Cut short" in c.params["text"])
        buttons = cut.params["reply_markup"]["inline_keyboard"]
        assert [[b["text"] for b in row] for row in buttons] == [["Continue"]]
        with aria.ledger.read() as s:
            (run,) = s.exec(select(Run).where(Run.trigger != "schedule")).all()
        assert (run.status, run.stop_reason) == ("ok", "length") and run.checkpoint is not None
        data = buttons[0][0]["callback_data"]
        fake_telegram.press_button(data, user_id=OWNER, message_id=cut.result["message_id"])
        fake_telegram.press_button(data, user_id=OWNER, message_id=cut.result["message_id"])
        (more,) = await fake_telegram.wait_for("sendMessage", predicate=lambda c: "Step two" in c.params["text"])
        answers = await fake_telegram.wait_for("answerCallbackQuery", count=2)
    assert more.params["text"].startswith("…Step two") and "Cut short" not in more.params["text"]
    assert sorted(str(a.params.get("text")) for a in answers) == ["Already continued.", "Continuing…"]
    # The same run went on, with the partial answer and a request to go on; no second run, one more model call.
    second = fake_openai.completions[1].body["messages"]
    assert second[-2]["role"] == "assistant" and second[-2]["content"].startswith("Step one")
    assert second[-1]["role"] == "user" and "Continue exactly where it stopped" in second[-1]["content"]
    assert len(fake_openai.completions) == 2
    with aria.ledger.read() as s:
        (run,) = s.exec(select(Run).where(Run.trigger != "schedule")).all()
    assert (run.status, run.stop_reason, run.checkpoint) == ("ok", "answer", None)
    # Later history recalls the whole answer, without the note.
    assert run.answer is not None and run.answer.startswith("Step one") and run.answer.endswith("clean the logs.")
    assert "Cut short" not in run.answer
    assert len(_spend(aria, run.id)) == 2  # both calls counted against the one run's caps
