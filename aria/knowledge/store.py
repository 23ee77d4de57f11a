"""Notes in the ledger: remember, supersede, forget, list, and files or documents ingested as passages.

Every change is one write transaction that takes SQLite's write lock at BEGIN (the ledger's `write()`), so
concurrent `remember`, `forget` and re-ingests of the same notes serialize, in this process or another: a
re-ingest reads the file's stored hash and replaces its passages under the same lock, and supersession is a
compare-and-set on the older note. Text is redacted before it is stored, like everything in the ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from aria.errors import ToolError
from aria.knowledge.chunking import Passage, name_date, split_passages
from aria.knowledge.models import RELIABILITY, Note, NoteDocument, NoteKind
from aria.knowledge.vectors import embed_pending
from aria.ledger import Ledger

MAX_NOTE_CHARS = 4_000  # one remembered fact; files are split into passages instead
MAX_FILE_BYTES = 2_000_000
FILE_SUFFIXES = (".md", ".markdown", ".txt", ".text", ".rst")
IngestStatus = Literal["added", "replaced", "unchanged", "empty", "refused"]


class KnowledgeError(ToolError):
    """A note operation that cannot be done (empty text, no such note, a note already replaced); the message says
    why, for the owner or the model."""


@dataclass(frozen=True)
class Ingested:
    """What adding one file did."""

    path: str
    status: IngestStatus
    passages: int = 0
    reason: str = ""


class NoteStore:
    """The notes of one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # facts ------------------------------------------------------------------------------------------------

    def remember(self, text: str, *, source: str = "owner", kind: NoteKind = "owner", tags: Iterable[str] = (),
                 supersedes: int | None = None, dated: dt.datetime | None = None) -> Note:
        """Store one fact; with `supersedes`, the older note is marked replaced by it in the same transaction."""
        body = " ".join(text.split()) if "\n" not in text.strip() else text.strip()
        if not body:
            raise KnowledgeError("a note needs some text")
        if len(body) > MAX_NOTE_CHARS:
            raise KnowledgeError(f"a note holds at most {MAX_NOTE_CHARS} characters (this one has {len(body)}); "
                                 "add long text as a file instead")
        now = self.ledger.now()
        note = Note(text=self.ledger.redact(body) or "", tags=_tags(tags), source=source[:500], kind=kind,
                    reliability=RELIABILITY[kind], dated_at=dated or now, created_at=now, updated_at=now,
                    supersedes=supersedes)
        with self.ledger.write() as session:
            session.add(note)
            session.flush()
            assert note.id is not None
            if supersedes is not None:
                self._replace(session, supersedes, note.id, note.reliability)
            session.refresh(note)
        return note

    def _replace(self, session: Session, old_id: int, new_id: int, reliability: int) -> None:
        """Compare-and-set: the older note must exist, not be replaced already, and be no more reliable than the
        new one (a finding made after reading a page cannot retire what the owner said); else the caller's whole
        transaction rolls back, and nothing is stored."""
        changed = session.execute(update(Note).where(col(Note.id) == old_id, col(Note.superseded_by).is_(None),
                                                     col(Note.reliability) <= reliability)
                                  .values(superseded_by=new_id))
        if changed.rowcount == 1:  # type: ignore[attr-defined]
            return
        old = session.get(Note, old_id)
        if old is None:
            raise KnowledgeError(f"there is no note {old_id} to replace")
        if old.reliability > reliability:
            raise KnowledgeError(f"note {old_id} is {old.kind}-stated; a less reliable note cannot replace it")
        raise KnowledgeError(f"note {old_id} was already replaced by note {old.superseded_by}; replace that one")

    def forget(self, note_id: int) -> Note:
        """Delete a note (its index entry goes with it). A note it had replaced becomes current again, unless a newer
        note replaces this one too."""
        with self.ledger.write() as session:
            note = session.get(Note, note_id)
            if note is None:
                raise KnowledgeError(f"there is no note {note_id}")
            # Taken out of a chain A ← this ← C, A stays replaced (by C): only the chain's newest note is current.
            session.execute(update(Note).where(col(Note.superseded_by) == note_id)
                            .values(superseded_by=note.superseded_by))
            session.execute(update(Note).where(col(Note.supersedes) == note_id).values(supersedes=note.supersedes))
            gone = Note.model_validate(note.model_dump())
            session.delete(note)
            if note.document_id is not None:
                session.execute(update(NoteDocument).where(col(NoteDocument.id) == note.document_id)
                                .values(passages=NoteDocument.passages - 1))
        return gone

    def get(self, note_id: int) -> Note | None:
        """One note by id."""
        with self.ledger.read() as session:
            return session.get(Note, note_id)

    def notes(self, ids: Sequence[int]) -> dict[int, Note]:
        """Notes by id, in one read."""
        if not ids:
            return {}
        with self.ledger.read() as session:
            return {n.id: n for n in session.exec(select(Note).where(col(Note.id).in_(list(ids)))) if n.id}

    def latest(self, limit: int = 20) -> list[Note]:
        """The newest notes first."""
        with self.ledger.read() as session:
            return list(session.exec(select(Note).order_by(col(Note.id).desc()).limit(limit)))

    def count(self) -> int:
        """How many notes there are."""
        with self.ledger.read() as session:
            return int(session.exec(select(func.count()).select_from(Note)).one())

    # files and documents ----------------------------------------------------------------------------------

    def add_text(self, key: str, text: str, name: str, *, kind: NoteKind = "runbook",
                 modified: dt.datetime | None = None) -> Ingested:
        """Store a document's passages under `key` (a path, or "telegram:<name>"): skipped when its content is
        unchanged, its old passages replaced when it changed, in one transaction."""
        digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        passages = split_passages(text, name)
        if not passages:
            return Ingested(key, "empty", reason="no text in it")
        now = self.ledger.now()
        with self.ledger.write() as session:
            document = session.exec(select(NoteDocument).where(col(NoteDocument.path) == key)).first()
            if document is not None and document.sha256 == digest:
                return Ingested(key, "unchanged", document.passages)
            status: IngestStatus = "added" if document is None else "replaced"
            replaced: dict[tuple[str, str], int] = {}
            if document is None:
                document = NoteDocument(path=key, sha256=digest, kind=kind, added_at=now, updated_at=now)
                session.add(document)
                session.flush()
            else:
                replaced = self._replaced_passages(session, document.id)
                session.execute(delete(Note).where(col(Note.document_id) == document.id))
                document.sha256, document.updated_at, document.kind = digest, now, kind
            document.passages = len(passages)
            session.add(document)
            session.flush()
            rows = self._passage_rows(passages, key, kind, document.id, modified or now, now)
            session.add_all(rows)
            session.flush()
            self._carry_replacements(session, rows, replaced)
        embed_pending(self.ledger, document.id)  # each passage embedded once, now, not by the searches to come
        return Ingested(key, status, len(passages))

    @staticmethod
    def _replaced_passages(session: Session, document_id: int | None) -> dict[tuple[str, str], int]:
        """(title, text) -> replacing note, for a document's passages that a newer note replaced."""
        found = session.exec(select(Note).where(col(Note.document_id) == document_id,
                                                col(Note.superseded_by).is_not(None)))
        return {(n.title, n.text): n.superseded_by for n in found if n.superseded_by is not None}

    @staticmethod
    def _carry_replacements(session: Session, rows: list[Note], replaced: dict[tuple[str, str], int]) -> None:
        """A passage that comes back unchanged in a re-added file stays replaced by the note that replaced it, so
        the old fact still never outranks the newer one."""
        for row in rows:
            newer = replaced.get((row.title, row.text))
            if newer is None or row.id is None:
                continue
            row.superseded_by = newer
            session.add(row)
            session.execute(update(Note).where(col(Note.id) == newer).values(supersedes=row.id))

    def _passage_rows(self, passages: list[Passage], key: str, kind: NoteKind, document_id: int | None,
                      fallback: dt.datetime, now: dt.datetime) -> list[Note]:
        source = key.removeprefix("telegram:") if key.startswith("telegram:") else key
        return [Note(text=self.ledger.redact(p.text) or "", title=self.ledger.redact(p.title) or "", source=source,
                     kind=kind, reliability=RELIABILITY[kind], document_id=document_id, position=index,
                     dated_at=p.dated or fallback, created_at=now, updated_at=now)
                for index, p in enumerate(passages)]

    def add_paths(self, paths: Iterable[Path]) -> list[Ingested]:
        """Add Markdown and text files, and such files in folders (recursively), in a stable order."""
        results: list[Ingested] = []
        for path in paths:
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
                               and not any(part.startswith(".") for part in p.relative_to(path).parts))
                results += [self.add_file(f) for f in files]
            else:
                results.append(self.add_file(path))
        return results

    def add_file(self, path: Path) -> Ingested:
        """Add one file; a file that is missing, too large, binary or not text is refused with the reason."""
        key = str(path.resolve())
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                return Ingested(key, "refused", reason=f"larger than {MAX_FILE_BYTES // 1_000_000} MB")
            raw = path.read_bytes()
            # A file that does not date itself inside is dated by its name, else by when it was last changed.
            modified = name_date(path.name) or dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        except OSError as exc:
            return Ingested(key, "refused", reason=exc.strerror or type(exc).__name__)
        if b"\0" in raw[:8192]:
            return Ingested(key, "refused", reason="not a text file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Ingested(key, "refused", reason="not UTF-8 text")
        return self.add_text(key, text, path.stem, modified=modified)

    def documents(self) -> list[NoteDocument]:
        """Files and documents whose passages are notes."""
        with self.ledger.read() as session:
            return list(session.exec(select(NoteDocument).order_by(col(NoteDocument.path))))


def _tags(tags: Iterable[str]) -> str:
    cleaned = [t.strip().lstrip("#").lower() for t in tags]
    return " ".join(dict.fromkeys(t for t in cleaned if t))[:300]
