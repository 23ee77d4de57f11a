"""The owner's way in, channel-neutral: `/remember`, `/forget`, `/notes`, and a document sent with the caption
`/learn`. Each returns the text the owner is sent; nothing here knows Telegram."""

from __future__ import annotations

import re

from aria.errors import LedgerUnavailable
from aria.knowledge import Knowledge, KnowledgeError
from aria.knowledge.chunking import name_date
from aria.knowledge.models import Note
from aria.knowledge.search import Hit
from aria.sanitize import shorten

COMMANDS = ("remember", "forget", "notes")
HELP = [
    ("remember", "keep a fact: /remember <text> (#tags), /remember replace <id> <text>"),
    ("forget", "delete a note: /forget <id>"),
    ("notes", "latest notes, or the ones matching: /notes [query]"),
]
SHOWN = 10
PREVIEW = 160
MAX_LEARN_CHARS = 1_000_000
_TAG = re.compile(r"(?<!\w)#([\w-]{1,40})")


def answer(knowledge: Knowledge, name: str, args: list[str], raw: str = "") -> str:
    """The reply to `/remember`, `/forget` or `/notes` with its words; `raw` is the whole message as written, so a
    remembered note keeps its line breaks (the words alone have lost them)."""
    try:
        if name == "remember":
            return _remember(knowledge, args, raw)
        if name == "forget":
            return _forget(knowledge, args)
        return _notes(knowledge, " ".join(args))
    except (KnowledgeError, LedgerUnavailable) as exc:
        return f"Not done: {exc}."


def _remember(knowledge: Knowledge, args: list[str], raw: str) -> str:
    replaces = None
    skipped = 0
    if len(args) >= 2 and args[0].lower() == "replace":
        if not (args[1].isascii() and args[1].isdigit() and len(args[1]) <= 18):
            return "Usage: /remember replace <id> <text>"
        replaces, args, skipped = int(args[1]), args[2:], 2
    text = after_words(raw, 1 + skipped) if raw.strip() else " ".join(args).strip()
    if not text:
        return "Usage: /remember <text>, e.g. /remember The NAS is at 192.168.10.25 #nas"
    note = knowledge.store.remember(text, tags=_TAG.findall(text), supersedes=replaces)
    told = f"Noted as note {note.id}."
    if replaces is not None:
        return f"{told} It replaces note {replaces}, which will no longer outrank it."
    older = [h for h in knowledge.search(text, 3) if h.id != note.id and h.kind == "owner"]
    if older:
        told += (f" Note {older[0].id} says something close (\"{shorten(older[0].text, 80)}\"): if this updates it, "
                 f"/forget {older[0].id}, or next time /remember replace {older[0].id} <text>.")
    return told


def after_words(raw: str, count: int) -> str:
    """`raw` without its first `count` words (the command, and any of its own arguments), the rest as written."""
    match = re.match(r"\s*" + r"\S+\s*" * count, raw)
    return raw[match.end():].strip() if match else ""


def _forget(knowledge: Knowledge, args: list[str]) -> str:
    if len(args) != 1 or not (args[0].isascii() and args[0].isdigit() and len(args[0]) <= 18):
        return "Usage: /forget <id> (the id /notes shows)"
    gone = knowledge.store.forget(int(args[0]))
    return f"Forgot note {gone.id}: \"{shorten(gone.text, PREVIEW)}\""


def _notes(knowledge: Knowledge, query: str) -> str:
    if query.strip():
        hits = knowledge.search(query, 5)
        if not hits:
            return f"I have no note about that ({shorten(query, 60)})."
        return "\n".join(_hit_line(h) for h in hits)
    latest = knowledge.store.latest(SHOWN)
    if not latest:
        return "No notes yet. Use /remember <text>, send a Markdown or text file with the caption /learn, or run " \
               "`aria knowledge add PATH`."
    total = knowledge.store.count()
    lines = [f"{total} note{'s' if total != 1 else ''}; the newest:"] + [_note_line(n) for n in latest]
    return "\n".join(lines)


def _note_line(note: Note) -> str:
    where = "you" if note.kind == "owner" else f"{note.kind} {note.source.rsplit('/', 1)[-1]}"
    replaced = f" (replaced by {note.superseded_by})" if note.superseded_by else ""
    return f"[{note.id}] {where}, {note.dated_at:%Y-%m-%d}{replaced}: {shorten(note.text, PREVIEW)}"


def _hit_line(hit: Hit) -> str:
    where = "you" if hit.kind == "owner" else f"{hit.kind} {hit.source.rsplit('/', 1)[-1]}"
    replaced = f" (replaced by {hit.superseded_by})" if hit.superseded_by else ""
    return f"[{hit.id}] {where}, {hit.dated:%Y-%m-%d}{replaced}: {shorten(hit.text, PREVIEW)}"


def learn_document(knowledge: Knowledge, file_name: str, text: str) -> str:
    """Ingest a document the owner sent with the caption /learn: its passages become notes (a changed document sent
    again replaces them; the same one again changes nothing). Returns the reply for the owner."""
    name = (file_name or "document").strip().replace("/", "_")[:200] or "document"
    if "\0" in text[:8192]:
        return f"Not learned: {name} is not a text file. Send Markdown or plain text."
    if len(text) > MAX_LEARN_CHARS:
        return f"Not learned: {name} is larger than {MAX_LEARN_CHARS // 1000} k characters."
    stem = name.rsplit(".", 1)[0] or name
    try:
        result = knowledge.store.add_text(f"telegram:{name}", text, stem, modified=name_date(name))
    except LedgerUnavailable as exc:
        return f"Not learned: {exc}."
    if result.status == "empty":
        return f"Not learned: {name} has no text in it."
    if result.status == "unchanged":
        return f"{name} is unchanged since I learned it ({result.passages} passages): nothing to do."
    verb = "Learned" if result.status == "added" else "Updated"
    return (f"{verb} {name}: {result.passages} passages. Ask about it any time; /notes <words> shows what I "
            "found.")
