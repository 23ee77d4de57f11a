"""Model Markdown as Telegram HTML, and HTML cut into messages Telegram accepts.

Stored outbox text stays as written (the terminal prints it as is); the Telegram sender renders it at send time:
model answers as Markdown, Aria's texts that quote commands and data (approvals, digests) escaped literally.
`split_html` cuts at paragraph, then line, then sentence, then word boundaries outside any formatting entity; only a
block that alone exceeds the limit (a long code block, say) is cut inside, and then its tags are closed at the end
of one part and re-opened at the start of the next, so every part is balanced HTML. Lengths are measured
conservatively: UTF-16 units of the HTML itself (tags and entities included), never less than what Telegram counts.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from chatgpt_md_converter import telegram_format

_ATOM = re.compile(r"<[^>]*>|&#?\w+;|[^<&]|[<&]", re.DOTALL)
_TAG = re.compile(r"<(/?)([a-zA-Z][\w-]*)[^>]*?>")
_SENTENCE_END = ".!?…"
# Cut kinds by preference; a cut inside an entity always ranks below every cut outside one.
_KINDS = ("paragraph", "line", "sentence", "word")


def to_html(markdown: str) -> str:
    """Telegram HTML for model Markdown; plain text comes out with `<`, `>` and `&` escaped."""
    return str(telegram_format(markdown))


def plain_text(markup: str) -> str:
    """The text of Telegram HTML as a reader sees it (tags dropped, entities decoded)."""
    return html.unescape(_TAG.sub("", markup))


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class _Cut:
    at: int  # atom index where the part ends (that atom, whitespace, is dropped)
    kind: int  # index into _KINDS
    inside: bool  # within a formatting entity
    stack: tuple[str, ...]  # opening tags in force at the cut


def split_html(markup: str, limit: int) -> list[str]:
    """Parts of at most `limit` UTF-16 units, each balanced HTML, cut at the cleanest boundary that fits."""
    parts: list[str] = []
    rest = markup.strip()
    while rest:
        part, after = head_html(rest, limit)
        if after == rest:  # no progress is possible (a limit smaller than one tag): send what is left whole
            part, after = rest, ""
        rest = after
        if plain_text(part).strip():
            parts.append(part)
    return parts or [markup.strip()]


def literal_html(text: str) -> str:
    """Telegram HTML showing `text` exactly as written (Aria's texts quoting commands, paths, globs)."""
    return html.escape(text, quote=False)


def telegram_parts(markup: str, *, photo: bool, text_limit: int, caption_limit: int) -> list[tuple[str, bool]]:
    """A row's messages from its HTML as (html, is_caption): a photo first, captioned with as much as fits."""
    rest = markup.strip()
    caption = ""
    if photo:
        caption, rest = head_html(rest, caption_limit) if rest else ("", "")
    texts = split_html(rest, text_limit) if rest else []
    return ([(caption, True)] if photo else []) + [(text, False) for text in texts]


def head_html(markup: str, limit: int) -> tuple[str, str]:
    """(first part of at most `limit` UTF-16 units, the balanced HTML that remains, possibly empty)."""
    atoms = _ATOM.findall(markup.strip())
    cut = _next_cut(atoms, 0, (), limit)
    if cut is None:  # it all fits
        return "".join(atoms), ""
    part = "".join(atoms[:cut.at]).rstrip() + _closers(cut.stack)
    start = cut.at
    if any(_name(tag) == "pre" for tag in cut.stack):
        if start < len(atoms) and atoms[start] == "\n":
            start += 1  # only the newline the code was cut at: the next line keeps its indentation
    else:
        while start < len(atoms) and atoms[start].isspace():
            start += 1
    return part, ("".join(cut.stack) + "".join(atoms[start:])).strip()


def _next_cut(atoms: list[str], start: int, stack: tuple[str, ...], limit: int) -> _Cut | None:
    """The best cut for the part beginning at `start`, or None when everything left fits."""
    size = utf16_len("".join(stack))
    best: dict[tuple[bool, int], _Cut] = {}
    hard: _Cut | None = None
    text_seen = False
    for index in range(start, len(atoms)):
        atom = atoms[index]
        fits = size + utf16_len(_closers(stack)) <= limit
        if text_seen and fits:
            hard = _Cut(index, len(_KINDS), bool(stack), stack)
            kind = _kind(atoms, index)
            if kind is not None:
                best[(bool(stack), kind)] = _Cut(index, kind, bool(stack), stack)
        if not fits:
            break
        size += utf16_len(atom)
        stack = _apply(stack, atom)
        text_seen = text_seen or not atom.startswith("<")
    else:
        if size + utf16_len(_closers(stack)) <= limit:
            return None
    return _choose(best, start, limit) or hard or _Cut(start + 1, len(_KINDS), bool(stack), _apply(stack, atoms[start]))


def _choose(best: dict[tuple[bool, int], _Cut], start: int, limit: int) -> _Cut | None:
    # Outside entities first; there a kind wins when its cut leaves the part at least half full, else the
    # preferred kind that exists at all (a code block that fits is never cut just to fill the part).
    for inside in (False, True):
        found = [best[(inside, kind)] for kind in range(len(_KINDS)) if (inside, kind) in best]
        for cut in found:
            if cut.at - start >= limit // 2:
                return cut
        if found:
            return found[0]
    return None


def _kind(atoms: list[str], index: int) -> int | None:
    atom = atoms[index]
    if not atom.isspace():
        return None
    previous = atoms[index - 1] if index > 0 else ""
    following = atoms[index + 1] if index + 1 < len(atoms) else ""
    if atom == "\n":
        return 0 if "\n" in (previous, following) else 1
    if previous and previous[-1] in _SENTENCE_END:
        return 2
    return 3


def _apply(stack: tuple[str, ...], atom: str) -> tuple[str, ...]:
    match = _TAG.match(atom)
    if match is None:
        return stack
    closing, name = match.group(1), match.group(2).lower()
    if not closing:
        return (*stack, atom)
    for depth in range(len(stack) - 1, -1, -1):
        if _name(stack[depth]) == name:
            return stack[:depth] + stack[depth + 1:]
    return stack


def _name(opening: str) -> str:
    match = _TAG.match(opening)
    return match.group(2).lower() if match else ""


def _closers(stack: tuple[str, ...]) -> str:
    return "".join(f"</{_name(tag)}>" for tag in reversed(stack))
