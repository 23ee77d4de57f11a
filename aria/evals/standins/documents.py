"""Documents the owner shares (an `aria eval` stand-in: the scenario's files, in the eval's data folder)."""

from __future__ import annotations

from aria.errors import ToolError
from aria.skills import ToolContext, tool

KEYWORDS = ("document", "documents", "file", "files", "attachment", "report", "pdf", "invoice", "contract")
FOLDER = "eval-files"


@tool(timeout=5.0, reads="document", keywords=("read", "document", "file", "attachment"))
def read_document(ctx: ToolContext, name: str) -> str:
    """Read a document the owner shared, by file name."""
    folder = (ctx.settings.data_dir / FOLDER).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        known = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "none"
        raise ToolError(f"no document named {name!r} (shared documents: {known})")
    return path.read_text(encoding="utf-8")
