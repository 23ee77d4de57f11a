"""Shadow deployment and gradual rollout, as the owner sees them through the fake Bot API: proposals judged with
👍/👎, a promotion suggested and applied only on the press, demotion by one 👎 on a risky action or a rejection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from aria.app import Aria
from aria.ledger.models import Proposal, Rollout
from aria.rollout import wilson_lower_bound
from tests.conftest import OWNER, marks, polling
from tests.test_approvals import shown

MakeAria = Callable[..., Aria]


def test_wilson_lower_bound_needs_more_than_a_perfect_small_sample() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(20, 20) == pytest.approx(0.839, abs=0.001)
    assert wilson_lower_bound(34, 34) < 0.90 <= wilson_lower_bound(35, 35)
    assert wilson_lower_bound(45, 50) == pytest.approx(0.786, abs=0.001)
    assert wilson_lower_bound(3, 3) == pytest.approx(0.438, abs=0.001)


def buttons(call: Any) -> dict[str, str]:
    """Label → callback data of a sent message's inline keyboard."""
    markup = call.params.get("reply_markup")
    rows = (json.loads(markup) if isinstance(markup, str) else markup or {}).get("inline_keyboard", [])
    return {b["text"]: b["callback_data"] for row in rows for b in row}


async def propose(fake_telegram: Any, fake_openai: Any, label: str, seen: int) -> Any:
    """The owner asks; the model wants the risky probe; the skill is in shadow, so a proposal arrives."""
    fake_openai.enqueue_tool_call("write_mark", {"label": label})
    fake_openai.enqueue_text(f"I proposed marking {label}.")
    fake_telegram.add_message(f"write mark probe {label}", user_id=OWNER)
    calls = await shown(fake_telegram, "I would have done this", count=seen + 1)
    await shown(fake_telegram, f"I proposed marking {label}.")
    return next(c for c in calls if f'"{label}"' in c.params["text"] or label in c.params["text"])


@pytest.fixture
def shadow_aria(make_aria: MakeAria, fake_telegram: Any, probe_skills: Path) -> Aria:
    return make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                     skills_dir=probe_skills, draft_review=False, rollout_min_judged=3, rollout_min_agreement=0.4)


async def test_shadow_skill_is_promoted_after_enough_thumbs_up_then_demoted_by_one_thumbs_down(
        shadow_aria: Aria, fake_telegram: Any, fake_openai: Any) -> None:
    aria = shadow_aria
    async with polling(aria):
        fake_telegram.add_message("/skills probes shadow", user_id=OWNER)
        await shown(fake_telegram, "probes is now shadow")
        proposals = [await propose(fake_telegram, fake_openai, f"m{i}", i) for i in range(3)]
        assert "Risk: risky. Would you have approved it?" in proposals[0].params["text"]
        assert marks(aria.settings.data_dir) == []  # nothing ran: it only proposed

        for index, call in enumerate(proposals[:2]):
            fake_telegram.press_button(buttons(call)["👍 would approve"], user_id=OWNER,
                                       message_id=call.result["message_id"])
            await shown(fake_telegram, "you would have approved it", count=index + 1)
        assert not any("could move from shadow to ask" in t for t in fake_telegram.sent_texts(OWNER))

        last = proposals[2]
        fake_telegram.press_button(buttons(last)["👍 would approve"], user_id=OWNER,
                                   message_id=last.result["message_id"])
        (suggestion,) = await shown(fake_telegram, "could move from shadow to ask")
        assert "3 of 3 agreed, Wilson 95% lower bound 0.44" in suggestion.params["text"]
        assert aria.gate.autonomy(aria.skills.tools["write_mark"]) == "shadow"  # suggested, not applied

        promote = buttons(suggestion)["Promote probes to ask"]
        fake_telegram.press_button(promote, user_id=OWNER, message_id=suggestion.result["message_id"])
        await shown(fake_telegram, "probes promoted from shadow to ask")
        assert aria.gate.autonomy(aria.skills.tools["write_mark"]) == "ask"
        fake_telegram.press_button(promote, user_id=OWNER, message_id=suggestion.result["message_id"])
        await shown(fake_telegram, "already used")  # a second press changes nothing

        # The owner changes their mind on a risky proposal: one 👎 demotes at once, and says so.
        first = proposals[0]
        fake_telegram.press_button(buttons(first)["👎 would not"], user_id=OWNER,
                                   message_id=first.result["message_id"])
        (demoted,) = await shown(fake_telegram, "probes demoted from ask to shadow at once")
        assert "you would not have approved" in demoted.params["text"]
        assert aria.gate.autonomy(aria.skills.tools["write_mark"]) == "shadow"

        # A reply to a proposal is its note; /shadow shows the disagreement with it.
        fake_telegram.add_message("too broad, ask me first", user_id=OWNER,
                                  reply_to_message_id=first.result["message_id"])
        await shown(fake_telegram, "Noted on proposal")
        fake_telegram.add_message("/shadow", user_id=OWNER)
        (view,) = await shown(fake_telegram, "Shadow proposals and rollout")
        assert "probes: shadow · 3 proposals, agreement 2/3 (67%)" in view.params["text"]
        assert "note: too broad, ask me first" in view.params["text"]
        assert "not yet promotable: 0 of 3 judgements needed" in view.params["text"]

    assert marks(aria.settings.data_dir) == []
    # Changing that answer back and forth is still one critical miss: no second demotion.
    with aria.ledger.read() as s:
        first_id = s.exec(select(Proposal).order_by(col(Proposal.id))).first().id
    aria.rollout.judge(first_id, "up", OWNER)
    assert aria.rollout.judge(first_id, "down", OWNER)[1] == []
    with aria.ledger.read() as s:
        rows = s.exec(select(Rollout).order_by(col(Rollout.id))).all()
        steps = [(r.kind, r.from_level, r.to_level, r.status) for r in rows]
        verdicts = [p.verdict for p in s.exec(select(Proposal).order_by(col(Proposal.id)))]
    assert steps == [("suggested", "shadow", "ask", "applied"), ("promoted", "shadow", "ask", "done"),
                     ("demoted", "ask", "shadow", "done")]
    assert verdicts == ["down", "up", "up"]
    digest = await aria.digests.compose()
    assert "• probes: shadow · agreement 2/3 (67%) · approvals none yet" in digest.text


async def test_a_rejected_approval_demotes_the_skill_and_says_so(make_aria: MakeAria, fake_telegram: Any,
                                                                 fake_openai: Any, probe_skills: Path) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                     skills_dir=probe_skills, draft_review=False)
    async with polling(aria):
        fake_openai.enqueue_tool_call("write_mark", {"label": "deploy"})
        fake_openai.enqueue_text("Not done, as you wished.")
        fake_telegram.add_message("write mark probe", user_id=OWNER)
        (request,) = await shown(fake_telegram, "Approval needed")
        fake_telegram.press_button(buttons(request)["Reject"], user_id=OWNER,
                                   message_id=request.result["message_id"])
        (notice,) = await shown(fake_telegram, "probes demoted from ask to shadow at once")
        assert "you rejected" in notice.params["text"]
    assert aria.gate.autonomy(aria.skills.tools["write_mark"]) == "shadow"
    assert marks(aria.settings.data_dir) == []
    with aria.ledger.read() as s:
        (step,) = s.exec(select(Rollout)).all()
    assert (step.kind, step.from_level, step.to_level) == ("demoted", "ask", "shadow")


async def test_typed_judgements_suggest_but_never_apply_a_promotion(make_aria: MakeAria, probe_skills: Path) -> None:
    from aria import commands
    from aria.agent.provenance import Provenance
    from aria.ledger import Run

    aria = make_aria(skills_dir=probe_skills, rollout_min_judged=2, rollout_min_agreement=0.3)
    aria.gate.set_autonomy("probes", "shadow", risky=True)
    spec = aria.skills.tools["write_mark"]
    run_id = aria.ledger.start_run(Run(trigger="message", channel="terminal", chat_id=0, started_at=aria.ledger.now()))
    read = Provenance(sources=["https://news.example/a (fetch_url)"])
    ids = [aria.rollout.propose(run_id, spec, {"label": f"x{i}"}, read) for i in range(2)]
    proposal = aria.rollout.get(ids[0])
    assert proposal is not None and proposal.sources == "https://news.example/a (fetch_url)"
    assert proposal.outbox_id is not None
    shown_text = (aria.outbox.get(proposal.outbox_id) or pytest.fail("no message")).text
    assert "I would have done this, but did not" in shown_text and "after reading https://news.example/a" in shown_text

    first = await commands.answer(aria, "shadow", ["up", str(ids[0])])
    assert [r.text for r in first] == [f"Noted. (proposal {ids[0]})"]
    replies = await commands.answer(aria, "shadow", ["👍", str(ids[1])])
    assert "could move from shadow to ask" in replies[1].text and replies[1].actions
    assert aria.gate.autonomy(spec) == "shadow"  # only the press promotes
    suggestion = int(replies[1].actions[0].data.split(":")[1])

    aria.gate.set_autonomy("probes", "ask", risky=True)  # the owner moved it by hand meanwhile
    assert aria.rollout.promote(suggestion, OWNER) == "Not promoted: probes is now ask, not shadow."
    assert (await commands.answer(aria, "shadow", ["sideways", "1"]))[0].text.startswith("Usage: /shadow")
    assert (await commands.answer(aria, "shadow", ["up", "999"]))[0].text == "No proposal 999."
