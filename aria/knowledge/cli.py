"""`aria knowledge`: add files, list, forget and search notes from the shell. Offline and quick: it opens the
ledger and nothing else (no model, no Telegram, no skills)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from aria.knowledge import Knowledge

app = typer.Typer(no_args_is_help=True, help="Notes and runbooks Aria answers from.")


def _open() -> Knowledge:
    from aria.config import load_settings
    from aria.errors import ConfigError
    from aria.knowledge import Knowledge
    from aria.ledger import Ledger
    from aria.ledger.redact import Redactor

    try:
        settings = load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"config error: {problem}", err=True)
        raise typer.Exit(2) from None
    return Knowledge(Ledger.open(settings.db_path, redactor=Redactor(settings.secrets())))


@app.command()
def add(paths: Annotated[list[Path], typer.Argument(help="Markdown or text files, or folders of them.")]) -> None:
    """Add files as notes (split into passages); a changed file replaces its notes, an unchanged one is skipped."""
    from aria.knowledge.vectors import embed_pending

    knowledge = _open()
    results = knowledge.store.add_paths(paths)
    for result in results:
        detail = result.reason if result.status == "refused" else f"{result.passages} passages"
        typer.echo(f"{result.status:9} {result.path} ({detail})")
    if embed_pending(knowledge.ledger):  # notes an earlier add could not store vectors for
        typer.echo("Stored the vectors that were missing.")
    if not results:
        typer.echo("No Markdown or text files found.", err=True)
    if not results or any(r.status == "refused" for r in results):
        raise typer.Exit(1)


@app.command("list")
def list_notes(limit: Annotated[int, typer.Option("--limit", min=1, help="How many of the newest.")] = 20) -> None:
    """The newest notes, and the files they came from."""
    knowledge = _open()
    for note in knowledge.store.latest(limit):
        where = "owner" if note.kind == "owner" else note.source
        title = f" [{note.title}]" if note.title else ""
        preview = " ".join(note.text.split())[:100]
        typer.echo(f"{note.id:>6}  {note.kind:7} {note.dated_at:%Y-%m-%d}  {where}{title}: {preview}")
    documents = knowledge.store.documents()
    typer.echo(f"{knowledge.store.count()} notes, {len(documents)} files.")


@app.command()
def forget(note_id: Annotated[int, typer.Argument(help="The note's id (see `aria knowledge list`).")]) -> None:
    """Delete one note."""
    from aria.knowledge import KnowledgeError

    try:
        gone = _open().store.forget(note_id)
    except KnowledgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Forgot note {gone.id}.")


@app.command()
def search(query: Annotated[str, typer.Argument(help="A question or words to look for.")],
           k: Annotated[int, typer.Option("--k", min=1, max=50, help="At most this many results.")] = 5,
           as_json: Annotated[bool, typer.Option("--json", help="A JSON array, best first ([] when none).")] = False,
           ) -> None:
    """The notes that best answer QUERY, best first; nothing when no note is relevant enough."""
    hits = _open().search(query, k)
    if as_json:
        typer.echo(json.dumps([h.as_json() for h in hits], ensure_ascii=False))
        return
    if not hits:
        typer.echo("No note about that.")
        return
    for hit in hits:
        where = f"{hit.source} > {hit.title}" if hit.title else hit.source
        typer.echo(f"[{hit.id}] {hit.score:.3f} {hit.kind} {hit.dated:%Y-%m-%d} {where}\n    "
                   + " ".join(hit.text.split())[:300])
