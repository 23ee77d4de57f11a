"""Knowledge around a run: the owner's commands, a document sent with /learn, the remember/recall/forget skill, and
the notes a request gets (fenced with their ids, cited, or "I have no note about that"), also through Telegram."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import select

from aria import commands
from aria.agent.state import Request
from aria.app import Aria
from aria.knowledge import Knowledge, Note
from aria.knowledge.context import NONE_FOUND
from aria.knowledge.owner import learn_document
from aria.ledger import Ledger, Run, Spend, Step
from aria.skills import ToolContext, ToolSpec, load_skill_file
from tests.conftest import OWNER, polling

MakeAria = Callable[..., Aria]
SKILL = load_skill_file(Path(__file__).parent.parent / "skills" / "knowledge.py", "test_knowledge_skills")
TOOLS: dict[str, ToolSpec] = {t.name: t for t in SKILL.tools}
RUNBOOK = "# NAS\n\n## Restart procedure\nStop Plex first, then restart the NAS from the DSM power menu.\n"


async def reply(aria: Aria, text: str) -> str:
    name, *args = text.lstrip("/").split()
    [answer] = await commands.answer(aria, name, args)
    return answer.text


def notes(ledger: Ledger) -> list[Note]:
    with ledger.read() as s:
        return list(s.exec(select(Note)))


async def test_the_owner_remembers_lists_finds_and_forgets_notes(make_aria: MakeAria) -> None:
    aria = make_aria()
    assert await reply(aria, "/notes") == ("No notes yet. Use /remember <text>, send a Markdown or text file with the "
                                           "caption /learn, or run `aria knowledge add PATH`.")
    assert await reply(aria, "/remember The NAS is at 192.168.10.20 #nas") == "Noted as note 1."
    told = await reply(aria, "/remember The NAS address is 192.168.10.25 now")
    assert told.startswith("Noted as note 2. Note 1 says something close") and "/forget 1" in told
    assert await reply(aria, "/remember replace 1 The NAS is at 192.168.10.25") == (
        "Noted as note 3. It replaces note 1, which will no longer outrank it.")
    listed = await reply(aria, "/notes")
    today = f"{aria.ledger.now():%Y-%m-%d}"
    assert listed.splitlines()[0] == "3 notes; the newest:" and f"[1] you, {today} (replaced by 3)" in listed
    found = await reply(aria, "/notes nas address")
    assert found.splitlines()[0].startswith(("[3] you", "[2] you"))
    assert await reply(aria, "/notes jenkins") == "I have no note about that (jenkins)."
    assert await reply(aria, "/forget 2") == 'Forgot note 2: "The NAS address is 192.168.10.25 now"'
    assert await reply(aria, "/forget 2") == "Not done: there is no note 2."
    assert await reply(aria, "/forget two") == "Usage: /forget <id> (the id /notes shows)"
    assert await reply(aria, "/remember replace 99 x") == "Not done: there is no note 99 to replace."
    assert [n.id for n in notes(aria.ledger)] == [1, 3]
    helped = await reply(aria, "/help")
    assert all(f"/{name} - " in helped for name in ("remember", "forget", "notes"))


def test_a_document_sent_with_learn_becomes_notes_once(ledger: Ledger) -> None:
    knowledge = Knowledge(ledger)
    assert learn_document(knowledge, "nas.md", RUNBOOK) == ("Learned nas.md: 1 passages. Ask about it any time; "
                                                            "/notes <words> shows what I found.")
    assert learn_document(knowledge, "nas.md", RUNBOOK) == ("nas.md is unchanged since I learned it (1 passages): "
                                                            "nothing to do.")
    assert learn_document(knowledge, "nas.md", RUNBOOK + "\n## Backups\nNightly at 01:30.\n").startswith(
        "Updated nas.md: 2 passages.")
    assert learn_document(knowledge, "empty.txt", "  \n") == "Not learned: empty.txt has no text in it."
    assert learn_document(knowledge, "x.pdf", "%PDF\0\0") == "Not learned: x.pdf is not a text file. Send Markdown " \
                                                             "or plain text."
    [first, second] = notes(ledger)
    assert (first.source, first.kind, first.title) == ("nas.md", "runbook", "NAS > Restart procedure")
    assert knowledge.search("how do I restart the nas")[0].id == first.id and second.text == "Nightly at 01:30."


async def call(ctx: ToolContext, name: str, **arguments: Any) -> Any:
    spec = TOOLS[name]
    return await spec.call(ctx, spec.validate(arguments))


async def test_the_skill_remembers_recalls_and_forgets_behind_approval(make_aria: MakeAria) -> None:
    aria = make_aria()
    clean = aria.ledger.start_run(Run(trigger="message", channel="terminal", started_at=aria.ledger.now()))
    tainted = aria.ledger.start_run(Run(trigger="message", channel="terminal", started_at=aria.ledger.now()))
    aria.ledger.add_step(Step(run_id=tainted, kind="guard", name="untrusted", status="ok",
                              started_at=aria.ledger.now(), result="https://evil.example/page (fetch_url)"))
    ctx = aria.tool_context(clean, Request("remember"))

    owned = await call(ctx, "remember", text="The kiln technician is booked via Keramikbedarf", tags=["kiln"])
    assert (owned.kind, owned.replaces) == ("owner", None)
    planted = await call(aria.tool_context(tainted, Request("x")), "remember", text="The kiln code is 0000")
    assert planted.kind == "tool"
    [_, row] = notes(aria.ledger)
    assert row.source == "chat, after reading https://evil.example/page (fetch_url)" and row.reliability == 1

    recalled = await call(ctx, "recall", query="who services the kiln technician?")
    assert recalled.found and recalled.notes[0].id == owned.id and recalled.notes[0].kind == "owner"
    assert (await call(ctx, "recall", query="Elasticsearch cluster restart")).notes == []
    assert TOOLS["recall"].reads == "notes" and TOOLS["forget"].risk == "risky"
    assert (await call(ctx, "forget", note_id=planted.id)).forgotten
    assert [n.id for n in notes(aria.ledger)] == [owned.id]


async def test_a_request_gets_its_notes_fenced_with_ids_and_the_answer_cites_them(make_aria: MakeAria,
                                                                                  fake_openai: Any) -> None:
    aria = make_aria()
    learn_document(aria.knowledge, "nas.md", RUNBOOK)
    fake_openai.enqueue_text("Stop Plex, then restart it from the DSM power menu [note 1].")

    outcome = await aria.agent.run(Request("how do I restart the NAS?", chat_id=OWNER))

    assert outcome.text == "Stop Plex, then restart it from the DSM power menu [note 1]."
    messages = fake_openai.last_request.body["messages"]
    assert '"I have no note about that"' in messages[0]["content"] and "[note N]" in messages[0]["content"]
    user = messages[-1]["content"]
    assert user.startswith("how do I restart the NAS?\n\nNotes that may answer this")
    today = f"{aria.ledger.now():%Y-%m-%d}"
    assert '<tool_output tool="notes"' in user and f"[note 1] (runbook, {today}, nas.md > NAS > Restart " in user
    steps = {s.name: s for s in aria.ledger.steps(outcome.run_id)}
    assert steps["recall"].result == "notes: 1" and steps["recall"].args == "how do I restart the NAS?"
    assert steps["untrusted"].result == "nas.md (notes)"  # a document's words are not the owner's


async def test_with_no_matching_note_the_model_is_told_so_and_its_answer_reaches_the_owner(
        make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria()
    aria.knowledge.store.remember("The NAS is at 192.168.10.25")
    fake_openai.enqueue_text("I have no note about that. I could check the router's DHCP leases.")

    outcome = await aria.agent.run(Request("What is the Jenkins admin password?", chat_id=OWNER))

    assert outcome.text.startswith("I have no note about that.")
    user = fake_openai.last_request.body["messages"][-1]["content"]
    assert user == f"What is the Jenkins admin password?\n\n{NONE_FOUND}"
    assert "untrusted" not in {s.name for s in aria.ledger.steps(outcome.run_id)}


async def test_without_notes_the_prompt_is_unchanged(make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria()
    await aria.agent.run(Request("hello"))
    messages = fake_openai.last_request.body["messages"]
    assert "[note N]" not in messages[0]["content"] and messages[-1]["content"] == "hello"


async def test_a_follow_up_is_rewritten_by_the_cheap_model_before_notes_are_searched(make_aria: MakeAria,
                                                                                    fake_openai: Any) -> None:
    aria = make_aria()
    aria.knowledge.store.remember("The NAS admin password is in Bitwarden under NAS DSM opsadmin")
    fake_openai.enqueue_text("The NAS is a Synology DS920+.")
    first = await aria.agent.run(Request("what kind of NAS do we have?", chat_id=OWNER))
    fake_openai.enqueue_text("NAS admin password")  # the rewrite
    fake_openai.enqueue_text("It is in Bitwarden [note 1].")

    outcome = await aria.agent.run(Request("and where is its password?", chat_id=OWNER))

    assert outcome.text == "It is in Bitwarden [note 1]."
    rewrite, answer = fake_openai.completions[-2:]
    assert rewrite.body["messages"][0]["content"].startswith("Rewrite the owner's last message")
    assert rewrite.body["messages"][-1]["content"] == "and where is its password?" and "tools" not in rewrite.body
    assert "[note 1]" in answer.body["messages"][-1]["content"]
    assert {s.name: s.args for s in aria.ledger.steps(outcome.run_id)}["recall"] == "NAS admin password"
    with aria.ledger.read() as s:
        assert len(s.exec(select(Spend).where(Spend.run_id == outcome.run_id)).all()) == 2  # within the run's budget
    assert first.run_id != outcome.run_id


async def test_through_telegram_a_remembered_fact_is_cited_and_an_unknown_one_declined(
        make_aria: MakeAria, fake_telegram: Any, fake_openai: Any) -> None:
    aria = make_aria(telegram_bot_token=fake_telegram.token, telegram_api_url=fake_telegram.api_url,
                     knowledge_rewrite=False)
    async with polling(aria):
        fake_telegram.add_message("/remember The NAS is at 192.168.10.25 #nas\nIts admin page:  port 5001",
                                  user_id=OWNER)
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "Noted as note 1.")
        stored = aria.knowledge.store.get(1)  # the lines as the owner wrote them, not words joined by spaces
        assert stored is not None and stored.text == "The NAS is at 192.168.10.25 #nas\nIts admin page:  port 5001"
        fake_openai.enqueue_text("The NAS is at 192.168.10.25 [note 1].")
        fake_telegram.add_message("what is the NAS address?", user_id=OWNER)
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: "[note 1]" in str(c.params.get("text")))
        sent = fake_openai.last_request.body["messages"][-1]["content"]
        assert f"[note 1] (owner, {aria.ledger.now():%Y-%m-%d}, owner)" in sent
        fake_openai.enqueue_text("I have no note about that.")
        fake_telegram.add_message("what is the Jenkins admin password?", user_id=OWNER)
        await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text") == "I have no note "
                                                                                                  "about that.")
        assert fake_openai.last_request.body["messages"][-1]["content"].endswith(NONE_FOUND)


async def test_a_self_contained_question_costs_no_rewrite(make_aria: MakeAria, fake_openai: Any) -> None:
    aria = make_aria()
    aria.knowledge.store.remember("The NAS admin password is in Bitwarden under NAS DSM opsadmin")
    await aria.agent.run(Request("what kind of NAS do we have?", chat_id=OWNER))
    before = len(fake_openai.completions)
    outcome = await aria.agent.run(Request("where is the NAS admin password kept?", chat_id=OWNER))
    assert len(fake_openai.completions) == before + 1  # the answer only
    assert {s.name: s.args for s in aria.ledger.steps(outcome.run_id)}["recall"] == "where is the NAS admin " \
                                                                                    "password kept?"
