"""Meaning in retrieval: the embedding models load from their wheels (no network), find a passage that shares few
words with the question, and do not stop unknown subjects from being declined."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aria.clock import ManualClock
from aria.knowledge import Knowledge, contextual
from aria.knowledge.meaning import Embedder, blended_embedder, static_embedder
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


@pytest.mark.parametrize("load", [static_embedder, blended_embedder], ids=["static", "blended"])
def test_the_models_load_from_their_own_wheels_and_know_what_words_mean(load: Callable[[], Embedder | None]) -> None:
    embedder = load()  # downloads are off: this works only from the wheels' own files
    assert embedder is not None
    near, far = embedder.similarities("reboot the server", ["restart the machine", "the invoice is due friday"])
    assert near > far + 0.2
    assert embedder.similarities("anything", [""]) == [0.0]  # a text with no token is similar to nothing


def test_feedback_moves_the_question_towards_its_best_matches_but_declining_sees_its_own_meaning() -> None:
    embedder = static_embedder()
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


def _forget_models() -> None:
    static_embedder.cache_clear()
    blended_embedder.cache_clear()


def test_without_the_models_notes_are_still_found_by_their_words(runbooks: Knowledge,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_models()
    monkeypatch.setitem(sys.modules, "wordllama", None)  # as if the package were missing: its import fails
    try:
        assert static_embedder() is None and blended_embedder() is None
        [first, *_] = runbooks.search("What port does postgres_exporter listen on?")
        assert "9187" in first.text
    finally:
        _forget_models()


def test_without_the_sentence_encoder_the_static_model_alone_finds_notes(runbooks: Knowledge,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    _forget_models()
    monkeypatch.setattr(contextual, "PACKAGE", "no_such_model_package")  # as if make had not installed it
    try:
        embedder = blended_embedder()
        assert embedder is static_embedder() and embedder is not None and not embedder.kept
        assert "static embedding model alone" in caplog.text and "no_such_model_package" in caplog.text
        question = "A pod won't go away after a node died, how do I get rid of it?"
        assert any("stuck in Terminating" in h.text for h in runbooks.search(question, 5))
    finally:
        _forget_models()


def test_with_no_notes_nothing_is_found_and_the_models_stay_unloaded(ledger: Ledger) -> None:
    _forget_models()
    try:
        assert Knowledge(ledger).search("how do I restart the database?") == []
        assert static_embedder.cache_info().currsize == blended_embedder.cache_info().currsize == 0
    finally:
        _forget_models()


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
