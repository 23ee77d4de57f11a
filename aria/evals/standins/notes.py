"""The owner's notes and saved pages (an `aria eval` stand-in: the scenario's notes)."""

from __future__ import annotations

import json

from aria.skills import ToolContext, tool

KEYWORDS = ("note", "notes", "knowledge", "saved", "wrote", "remember")
NOTES = "eval-notes.json"


@tool(timeout=5.0, reads="notes", keywords=("search", "notes", "note", "knowledge"))
def search_notes(ctx: ToolContext, query: str) -> str:
    """Search the owner's notes; returns the matching notes (every note when nothing matches)."""
    path = ctx.settings.data_dir / NOTES
    notes = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    words = {w for w in query.lower().split() if len(w) > 2}
    hits = [n for n in notes if words & set((n["title"] + " " + n["text"]).lower().split())] or notes
    return "\n\n".join(f"# {n['title']}\n{n['text']}" for n in hits) or "No notes."
