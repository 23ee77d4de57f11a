"""Knowledge: notes and runbooks in the ledger, retrieved with FTS5 candidates and a rerank, and handed to the
agent within a token budget. `Knowledge` is the one object the rest of Aria holds."""

from __future__ import annotations

from sqlalchemy import Connection

from aria.knowledge.models import Note, NoteDocument, NoteKind
from aria.knowledge.search import Hit, Searcher
from aria.knowledge.store import Ingested, KnowledgeError, NoteStore
from aria.ledger import Ledger


class Knowledge:
    """The notes of one ledger: storing (`store`) and finding (`search`)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.store = NoteStore(ledger)
        self.searcher = Searcher(ledger)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The best notes for `query`, best first; empty when none is relevant enough."""
        return self.searcher.search(query, k)

    def has_notes(self, conn: Connection | None = None) -> bool:
        """True once any note exists (only then does a request get notes, or the prompt lines about them); read in
        the caller's transaction when given one (a run reads it with the rest of what it opens with)."""
        if conn is None:
            with self.ledger.read_conn() as own:
                return self.has_notes(own)
        return conn.exec_driver_sql("SELECT 1 FROM note LIMIT 1").first() is not None


__all__ = ["Hit", "Ingested", "Knowledge", "KnowledgeError", "Note", "NoteDocument", "NoteKind", "NoteStore",
           "Searcher"]
