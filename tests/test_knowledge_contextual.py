"""The sentence encoder and the vectors kept in the ledger: the numpy forward pass gives the reference
implementation's vectors, an altered weights file is refused, and each note is embedded once (when it is added,
or by the next search for a remembered one) and its vector read back by later processes, dropped with the note and
never used for a text it was not made from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np
import pytest

from aria.doctor import knowledge_models
from aria.errors import LedgerUnavailable
from aria.knowledge import Knowledge, contextual, search
from aria.knowledge.contextual import MiniLM, ModelUnavailable, model_folder
from aria.knowledge.meaning import blended_embedder
from aria.knowledge.vectors import digest
from aria.ledger import Ledger

if TYPE_CHECKING:
    from aria.app import Aria

DATA = Path(__file__).parent / "data" / "knowledge"
RUNBOOK = """# Web shop

## Maintenance mode
Set MAINTENANCE=1 on the shop deployment to show the maintenance page; remove it afterwards.

## Payments
Stripe webhooks arrive at /hooks/stripe and are retried for three days.

## Out of office
Set the Fastmail vacation response under Settings, for orders@ too.
"""


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many texts each call of the sentence encoder embedded, from a fresh process's empty caches."""
    calls: list[int] = []
    embed = MiniLM.embed

    def counted(self: MiniLM, texts: list[str]) -> object:
        calls.append(len(texts))
        return embed(self, texts)

    monkeypatch.setattr(MiniLM, "embed", counted)
    blended_embedder.cache_clear()
    yield calls
    blended_embedder.cache_clear()


def vectors(ledger: Ledger) -> dict[int, tuple[str, str]]:
    with ledger.read_conn() as conn:
        return {int(r[0]): (r[1], r[2]) for r in conn.exec_driver_sql("SELECT note_id, model, digest FROM note_vector")}


def note_ids(ledger: Ledger) -> set[int]:
    with ledger.read_conn() as conn:
        return {int(r[0]) for r in conn.exec_driver_sql("SELECT id FROM note")}


def test_the_forward_pass_gives_the_reference_implementations_vectors() -> None:
    reference = json.loads((DATA / "minilm_reference.json").read_text(encoding="utf-8"))
    found = MiniLM.load().embed(reference["texts"])
    assert np.abs(found - np.array(reference["vectors"], dtype=np.float32)).max() < 1e-5
    alone = MiniLM.load().embed(reference["texts"][:1])  # no padding: the same vector
    assert np.abs(alone[0] - found[0]).max() < 1e-5
    assert not MiniLM.load().embed([""]).any()  # a text with no token is similar to nothing


def test_a_weights_file_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").symlink_to(model_folder() / "tokenizer.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x08" + bytes(15))
    with pytest.raises(ModelUnavailable, match="not the published all-MiniLM-L6-v2"):
        MiniLM.load(tmp_path)
    with pytest.raises(ModelUnavailable, match=r"no model\.safetensors"):
        MiniLM.load(tmp_path / "elsewhere")


def test_each_note_is_embedded_once_and_later_searches_read_its_vector(ledger: Ledger,
                                                                       encoder_calls: list[int]) -> None:
    knowledge = Knowledge(ledger)
    knowledge.store.add_text("/srv/notes/shop.md", RUNBOOK, "shop.md")
    embedder = blended_embedder()
    assert embedder is not None and embedder.kept
    assert set(vectors(ledger)) == note_ids(ledger) and len(note_ids(ledger)) == 3
    assert {model for model, _ in vectors(ledger).values()} == {embedder.name}
    assert sum(encoder_calls) == 3  # each passage once, as it was added

    blended_embedder.cache_clear()  # as a new process: nothing in memory
    encoder_calls.clear()
    [hit, *_] = knowledge.search("How do I turn on the shop's maintenance page?")
    assert "MAINTENANCE=1" in hit.text
    assert encoder_calls == [1]  # the question only: every note's vector was read from the ledger


def test_a_remembered_note_is_embedded_by_the_next_search_and_forgetting_drops_its_vector(
        ledger: Ledger, encoder_calls: list[int]) -> None:
    knowledge = Knowledge(ledger)
    knowledge.store.add_text("/srv/notes/shop.md", RUNBOOK, "shop.md")
    note = knowledge.store.remember("The backup contact during holidays is Lena Fischer, phone +49 160 9876 5432.")
    assert note.id not in vectors(ledger)
    [hit, *_] = knowledge.search("Who is the backup contact during holidays?")
    assert hit.id == note.id and note.id in vectors(ledger)

    knowledge.store.forget(note.id)
    assert note.id not in vectors(ledger) and set(vectors(ledger)) == note_ids(ledger)


def test_a_vector_made_from_other_text_is_not_used(ledger: Ledger, encoder_calls: list[int]) -> None:
    knowledge = Knowledge(ledger)
    knowledge.store.add_text("/srv/notes/shop.md", RUNBOOK, "shop.md")
    with ledger.write_conn() as conn:  # a note's id reused by another text (a vector written in a race)
        conn.exec_driver_sql("UPDATE note_vector SET digest = ? WHERE note_id = (SELECT min(id) FROM note)",
                             (digest("something else"),))
    blended_embedder.cache_clear()
    encoder_calls.clear()
    knowledge.search("How do I put the shop into maintenance?")
    assert encoder_calls == [1, 1]  # the question, and the one note whose stored vector was not its own
    with ledger.read_conn() as conn:
        stored = conn.exec_driver_sql("SELECT n.title, n.text, v.digest FROM note n JOIN note_vector v "
                                      "ON v.note_id = n.id WHERE n.id = (SELECT min(id) FROM note)").one()
    assert stored[2] == digest(f"{stored[0]}\n{stored[1]}")


def test_an_old_ledgers_first_searches_embed_a_few_notes_each_and_answer_meanwhile(
        ledger: Ledger, encoder_calls: list[int], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    knowledge = Knowledge(ledger)
    knowledge.store.add_text("/srv/notes/shop.md", RUNBOOK, "shop.md")
    with ledger.write_conn() as conn:
        conn.exec_driver_sql("DELETE FROM note_vector")  # as a ledger from before vectors were kept
    blended_embedder.cache_clear()  # opened by a new process
    monkeypatch.setattr(search, "SEARCH_EMBEDS", 2)
    caplog.set_level(logging.INFO, logger="aria.knowledge.search")
    question = "Where do Stripe webhooks arrive?"
    assert "/hooks/stripe" in knowledge.search(question)[0].text  # answered meanwhile
    assert "3 notes have no vector yet: this search ranks with the static model and embeds 2" in caplog.text
    assert len(vectors(ledger)) == 2
    caplog.clear()
    assert "/hooks/stripe" in knowledge.search(question)[0].text  # one missing: embedded now, and blended
    assert "no vector yet" not in caplog.text and set(vectors(ledger)) == note_ids(ledger)


def test_a_ledger_that_cannot_be_written_costs_time_not_the_answer(ledger: Ledger, encoder_calls: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    knowledge = Knowledge(ledger)
    knowledge.store.add_text("/srv/notes/shop.md", RUNBOOK, "shop.md")
    note = knowledge.store.remember("The shop's TLS certificate renews on the 3rd of each month.")

    def full() -> object:
        raise LedgerUnavailable("disk full")

    monkeypatch.setattr(ledger, "write_conn", full)
    [hit, *_] = knowledge.search("When does the shop's certificate renew?")
    assert hit.id == note.id and note.id not in vectors(ledger)
    assert "note vectors were not stored (the ledger cannot be written: disk full)" in caplog.text

    monkeypatch.undo()  # space again: the next search stores the vector it already holds
    assert knowledge.search("When does the shop's certificate renew?")[0].id == note.id
    assert set(vectors(ledger)) == note_ids(ledger)


def test_doctor_names_the_models_verifies_the_weights_and_counts_stored_vectors(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    Knowledge(ledger).store.add_text("/srv/notes/shop.md", RUNBOOK, "shop.md")
    aria = cast("Aria", SimpleNamespace(ledger=ledger))
    check = knowledge_models(aria)
    assert (check.verdict, check.detail) == ("ok", "3 notes, 3 with a stored vector; static model and "
                                                   "all-MiniLM-L6-v2 (weights verified)")
    monkeypatch.setattr(contextual, "MODEL_SHA256", "0" * 64)
    assert knowledge_models(aria).verdict == "fail" and "not the published ones" in knowledge_models(aria).detail
    monkeypatch.setattr(contextual, "PACKAGE", "no_such_model_package")
    missing = knowledge_models(aria)
    assert missing.verdict == "warn" and "static model only" in missing.detail and "make" in missing.detail
