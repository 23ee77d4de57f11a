"""The knowledge tables (created by migration m011_knowledge): notes and the files they came from.

The FTS5 index `note_fts` (and its vocabulary `note_vocab`) is an external-content index over `note`, kept in step by
triggers, so no model describes it: every write goes through these rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from sqlalchemy import String
from sqlmodel import Field, SQLModel

# Where a note came from, most reliable first: the owner's own words, a runbook or document the owner added, a page
# from the web, a tool's output (or a note a run wrote after reading untrusted content).
NoteKind = Literal["owner", "runbook", "web", "tool"]
RELIABILITY: dict[str, int] = {"owner": 3, "runbook": 2, "web": 1, "tool": 1}


class NoteDocument(SQLModel, table=True):
    """A file (or a document sent in chat) whose passages are notes; re-adding it replaces them when it changed."""

    __tablename__ = "note_document"

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(unique=True)  # an absolute path, or "telegram:<file name>"
    sha256: str
    kind: str = "runbook"
    passages: int = 0
    added_at: dt.datetime
    updated_at: dt.datetime


class Note(SQLModel, table=True):
    """One fact or passage: text, where it came from, how reliable that is, when it holds, what it replaced."""

    id: int | None = Field(default=None, primary_key=True)
    text: str
    title: str = ""  # a passage's heading path ("Backups > Restore"); empty for a fact
    tags: str = ""  # space-separated
    source: str  # "owner", a file path, a URL, "tool:<name>"
    kind: NoteKind = Field(sa_type=String)
    reliability: int = 1
    document_id: int | None = Field(default=None, foreign_key="note_document.id")
    position: int = 0  # order within its document
    supersedes: int | None = None  # the older note this one replaced
    superseded_by: int | None = None  # set on the older note, in the same transaction
    dated_at: dt.datetime  # when the fact was stated: a date the text gives, else when it was written or added
    created_at: dt.datetime
    updated_at: dt.datetime
