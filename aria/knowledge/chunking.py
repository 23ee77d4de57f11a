"""Files into passages: split at Markdown headings, then at paragraphs, into passages of bounded size that keep
their heading path as a title; and the date a passage speaks for (front matter, an "Updated:" line, a dated
heading), so a newer statement of a fact can win over an older one.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

MAX_CHARS = 1_200  # a passage at most (about 300 tokens): small enough to cite, big enough to hold a procedure
MIN_CHARS = 200  # paragraphs shorter than this join the next one under the same heading
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SETEXT = re.compile(r"^(=+|-+)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_DATE = re.compile(r"\b(20\d\d|19\d\d)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\b")
_DATED_LINE = re.compile(r"^\W*(?:date|updated|last[ _-]?updated|last[ _-]?reviewed|reviewed|modified|as of)\b\W*"
                         r".*?\b((?:19|20)\d\d-\d\d-\d\d)\b", re.IGNORECASE)
_NAME_MONTH = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_.](0[1-9]|1[0-2])(?!\d)")
_NAME_YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


@dataclass(frozen=True)
class Passage:
    """A bounded piece of a file: its heading path, its text, and the date it speaks for (if the file says)."""

    title: str
    text: str
    dated: dt.datetime | None = None


def parse_date(text: str) -> dt.datetime | None:
    """The first ISO date (YYYY-MM-DD) in `text`, as midnight UTC."""
    match = _DATE.search(text)
    if match is None:
        return None
    try:
        return dt.datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=dt.UTC)
    except ValueError:
        return None


def name_date(name: str) -> dt.datetime | None:
    """The date a file's name gives (`2025-03-02-outage.md`, `runbook-2024-05.md`, `policy_2023.md`), if any."""
    full = parse_date(name)
    if full is not None:
        return full
    month = _NAME_MONTH.search(name)
    if month is not None:
        return dt.datetime(int(month[1]), int(month[2]), 1, tzinfo=dt.UTC)
    year = _NAME_YEAR.search(name)
    return dt.datetime(int(year[1]), 1, 1, tzinfo=dt.UTC) if year is not None else None


def document_date(text: str) -> dt.datetime | None:
    """The date a whole file gives for itself: front matter `date:`/`updated:`, or an "Updated: …" line near the
    top."""
    front = _FRONT_MATTER.match(text)
    head = front.group(1).splitlines() if front else []
    head += text.splitlines()[:15]
    for line in head:
        match = _DATED_LINE.match(line.strip())
        if match:
            return parse_date(match.group(1))
    return None


def split_passages(text: str, name: str) -> list[Passage]:
    """`text` (Markdown or plain) as passages, in order. `name` (the file's stem) heads titles when the file has no
    top heading."""
    body = _FRONT_MATTER.sub("", text.replace("\r\n", "\n").replace("\r", "\n"), count=1)
    whole_date = document_date(text)
    passages: list[Passage] = []
    for path, section in _sections(body, name):
        heading_date = parse_date(path[-1]) if path else None
        dated = heading_date or _section_date(section) or whole_date
        title = " > ".join(path)
        for chunk in _chunks(_paragraphs(section)):
            passages.append(Passage(title=title, text=chunk, dated=dated))
    return passages


def _section_date(lines: list[str]) -> dt.datetime | None:
    for line in lines[:3]:
        match = _DATED_LINE.match(line.strip())
        if match:
            return parse_date(match.group(1))
    return None


def _sections(text: str, name: str) -> list[tuple[list[str], list[str]]]:
    """(heading path, lines) for each section; fenced code is never read as headings."""
    lines = text.split("\n")
    path: list[tuple[int, str]] = []
    sections: list[tuple[list[str], list[str]]] = []
    current: list[str] = []
    in_code = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if _FENCE.match(line):
            in_code = not in_code
        heading = None if in_code else _HEADING.match(line)
        level, title, skip = 0, "", 1
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
        elif (not in_code and line.strip() and index + 1 < len(lines) and not _follows_text(current)
              and _SETEXT.match(lines[index + 1]) and len(lines[index + 1].strip()) >= 3):
            level, title, skip = (1 if lines[index + 1].startswith("=") else 2), line.strip(), 2
        if level:
            if any(c.strip() for c in current):
                sections.append(([t for _, t in path] or [name], current))
            current = []
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
        else:
            current.append(line)
        index += skip
    if any(c.strip() for c in current):
        sections.append(([t for _, t in path] or [name], current))
    return sections


def _follows_text(current: list[str]) -> bool:
    """A setext heading needs a blank line (or nothing) before it; otherwise `text\n---` is a paragraph and rule."""
    return bool(current) and bool(current[-1].strip())


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated blocks; a fenced code block stays whole."""
    blocks: list[str] = []
    block: list[str] = []
    in_code = False
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
        if not line.strip() and not in_code:
            if block:
                blocks.append("\n".join(block).strip())
                block = []
            continue
        block.append(line)
    if block:
        blocks.append("\n".join(block).strip())
    return [b for b in blocks if b and not _SETEXT.fullmatch(b)]


def _chunks(paragraphs: list[str]) -> list[str]:
    """Paragraphs packed into passages of at most MAX_CHARS; a longer paragraph is cut at sentence or line ends."""
    pieces: list[str] = []
    for paragraph in paragraphs:
        pieces += _cut(paragraph) if len(paragraph) > MAX_CHARS else [paragraph]
    chunks: list[str] = []
    for piece in pieces:
        if chunks and (len(chunks[-1]) < MIN_CHARS or len(piece) < MIN_CHARS // 2) \
                and len(chunks[-1]) + len(piece) + 2 <= MAX_CHARS:
            chunks[-1] = f"{chunks[-1]}\n\n{piece}"
        else:
            chunks.append(piece)
    return chunks


def _cut(paragraph: str) -> list[str]:
    units = re.split(r"(?<=[.!?])\s+|\n", paragraph)
    out: list[str] = []
    for unit in units:
        unit = unit.strip()
        while len(unit) > MAX_CHARS:  # one enormous line: cut at a space
            cut = unit.rfind(" ", 0, MAX_CHARS)
            cut = cut if cut > MAX_CHARS // 2 else MAX_CHARS
            out.append(unit[:cut].strip())
            unit = unit[cut:].strip()
        if not unit:
            continue
        if out and len(out[-1]) + len(unit) + 1 <= MAX_CHARS:
            out[-1] = f"{out[-1]} {unit}"
        else:
            out.append(unit)
    return out
