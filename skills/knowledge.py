"""Knowledge: remember facts the owner states, recall notes and runbooks, forget a note."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from aria.agent.provenance import untrusted_sources
from aria.knowledge import Knowledge
from aria.knowledge.models import NoteKind
from aria.knowledge.store import MAX_NOTE_CHARS
from aria.skills import ToolContext, tool

KEYWORDS = (
    "remember", "note", "notes", "recall", "forget", "runbook", "runbooks", "knowledge", "told", "memorize",
    "documented", "docs",
)


class Remembered(BaseModel):
    """A stored note."""

    id: int
    kind: str  # owner: the owner's words; tool: written after the run read untrusted content
    replaces: int | None = None


class RecalledNote(BaseModel):
    """One note that matches."""

    id: int
    kind: str
    source: str
    date: str
    text: str
    replaced_by: int | None = None


class Recalled(BaseModel):
    """Notes for a query, best first; none when no note is relevant enough."""

    notes: list[RecalledNote]
    found: bool


class Forgotten(BaseModel):
    """A deleted note."""

    id: int
    forgotten: bool


@tool(timeout=10.0, keywords=("remember", "note", "memorize", "save"))
def remember(ctx: ToolContext, text: Annotated[str, Field(min_length=1, max_length=MAX_NOTE_CHARS)],
             tags: list[str] | None = None, replaces: int | None = None) -> Remembered:
    """Store a fact the owner states, for later. `replaces` is the id of an older note this one updates (it then
    never outranks this one)."""
    read = untrusted_sources(ctx.ledger, ctx.run_id) if ctx.run_id is not None else []
    # Who said it is decided here, not by the model: after untrusted content, a note is not the owner's word.
    kind: NoteKind = "tool" if read else "owner"
    source = f"chat, after reading {', '.join(read)}" if read else "owner (chat)"
    note = Knowledge(ctx.ledger).store.remember(text, source=source, kind=kind, tags=tags or (), supersedes=replaces)
    assert note.id is not None
    return Remembered(id=note.id, kind=kind, replaces=replaces)


@tool(timeout=10.0, keywords=("recall", "notes", "note", "runbook", "know", "documented"), reads="notes")
def recall(ctx: ToolContext, query: Annotated[str, Field(min_length=1, max_length=500)],
           k: Annotated[int, Field(ge=1, le=10)] = 5) -> Recalled:
    """Search the owner's notes and runbooks; cite what you use as [note N]. No notes means no note answers it."""
    hits = Knowledge(ctx.ledger).search(query, k)
    notes = [RecalledNote(id=h.id, kind=h.kind, source=f"{h.source} > {h.title}" if h.title else h.source,
                          date=f"{h.dated:%Y-%m-%d}", text=h.text, replaced_by=h.superseded_by) for h in hits]
    return Recalled(notes=notes, found=bool(notes))


@tool(timeout=10.0, risk="risky", keywords=("forget", "delete", "remove"))
def forget(ctx: ToolContext, note_id: int) -> Forgotten:
    """Delete one note by id (the owner approves it first)."""
    Knowledge(ctx.ledger).store.forget(note_id)
    return Forgotten(id=note_id, forgotten=True)
