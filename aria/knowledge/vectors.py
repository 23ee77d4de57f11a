"""Notes' vectors from the blended embedder, kept in the ledger (`note_vector`, migration m015) so each note is
embedded once, when it is stored, not by every process that searches.

A vector is stored with the model's name and a digest of the text it was made from, and is used only when both
still match. Writing one is best-effort: a full disk or a busy ledger costs the next search some time, never a note.
A search embeds at most SEARCH_EMBEDS missing notes (about a third of a second); while any are still missing, it
ranks with the static model alone, so an old ledger's first searches stay quick and the vectors fill in over a few
searches (or at once with `aria knowledge add`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from aria.errors import LedgerUnavailable
from aria.knowledge.meaning import Embedder, blended_embedder

if TYPE_CHECKING:
    from aria.ledger import Ledger

log = logging.getLogger(__name__)
NEIGHBOUR_NOTES = 2_000  # the notes are compared with a question one by one (and kept embedded) up to this many
SEARCH_EMBEDS = 32  # missing vectors a search embeds before it answers (about 11 ms each)


@dataclass(frozen=True)
class NoteText:
    """A note as it is embedded: its id and its title and text."""

    id: int
    text: str


def note_text(title: str, text: str) -> str:
    """What is embedded of a note (and what the rerank compares)."""
    return f"{title}\n{text}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def read(conn: Connection, embedder: Embedder, *, document_id: int | None = None,
         prime: bool = True) -> tuple[list[NoteText], list[NoteText]]:
    """Every note (or one document's), and those of them with no usable vector stored under `embedder`'s name
    (none, for an embedder whose vectors are not kept). With `prime`, stored vectors the embedder does not hold yet
    are read into it (a long-running process reads each once)."""
    import numpy as np

    rows = conn.exec_driver_sql(
        "SELECT n.id, n.title, n.text, v.digest FROM note n "
        "LEFT JOIN note_vector v ON v.note_id = n.id AND v.model = ? WHERE ? IS NULL OR n.document_id = ?",
        (embedder.name, document_id, document_id)).all()
    notes = [NoteText(int(note_id), note_text(title, text)) for note_id, title, text, _ in rows]
    if not embedder.kept:
        return notes, []
    missing: list[NoteText] = []
    stored: dict[int, str] = {}
    for note, (_, _, _, made_from) in zip(notes, rows, strict=True):
        if made_from is None or made_from != digest(note.text):
            missing.append(note)
        elif prime and not embedder.holds(note.text):
            stored[note.id] = note.text
    if stored:
        marks = ",".join("?" * len(stored))
        embedder.prime({stored[int(note_id)]: np.frombuffer(blob, dtype="<f4").astype(np.float32)
                        for note_id, blob in conn.exec_driver_sql(
                            f"SELECT note_id, vector FROM note_vector WHERE note_id IN ({marks})", tuple(stored))})
    return notes, missing


def keep(ledger: Ledger, embedder: Embedder, notes: Sequence[NoteText]) -> int:
    """Embed `notes` (those not in the embedder's cache) and store their vectors; returns how many were stored. A
    note deleted meanwhile gets none (its trigger ran already)."""
    if not notes:
        return 0
    vectors = embedder.vectors([n.text for n in notes])
    rows = [(n.id, embedder.name, digest(n.text), vector.astype("<f4").tobytes(), n.id)
            for n, vector in zip(notes, vectors, strict=True)]
    try:
        with ledger.write_conn() as conn:
            conn.exec_driver_sql("INSERT OR REPLACE INTO note_vector (note_id, model, digest, vector) "
                                 "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM note WHERE id = ?)", rows)
    except (LedgerUnavailable, OperationalError) as exc:
        log.warning("note vectors were not stored (%s): they will be embedded again", exc)
        return 0
    return len(rows)


def embed_pending(ledger: Ledger, document_id: int | None = None) -> int:
    """Embed and store every note (or one document's) that has no vector yet, while the notes are few enough to be
    compared one by one; returns how many were embedded."""
    with ledger.read_conn() as conn:
        total = int(conn.exec_driver_sql("SELECT count(*) FROM note").scalar_one())
        if total == 0 or total > NEIGHBOUR_NOTES:
            return 0
        embedder = blended_embedder()
        if embedder is None or not embedder.kept:
            return 0
        _, missing = read(conn, embedder, document_id=document_id, prime=False)
    return keep(ledger, embedder, missing)
