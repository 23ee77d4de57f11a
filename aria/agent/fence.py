"""Fencing untrusted text as data: a tag pair no content can close, and no look-alike tags left inside.

Two independent layers, so either alone holds:
1. Each fence has a fresh random id (`secrets.token_hex`) in its opening and closing tag, so content cannot know
   the one closing tag that ends it.
2. Anything in the content that looks like a fence tag is replaced, judged on a skeleton of the text: HTML entities
   decoded, Unicode compatibility-normalised (NFKD: NFKC's look-alike mapping, with accents split off), zero-width,
   format, control and combining characters dropped, case folded and a few look-alike letters mapped, with any
   spacing between the parts.
"""

from __future__ import annotations

import html
import re
import secrets
import unicodedata

TAG = "tool_output"
OUTPUT_TOKENS = 1_500  # tool output handed back to the model, at most
REMOVED = "[fence tag removed]"
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});?")
_DROPPED = {"Cf", "Mn", "Me", "Cc"}  # zero-width/format, combining marks, control characters
_KEEP = {"\n", "\t", "\r"}
# Letters of the tag name that survive NFKC but read the same: Cyrillic, Greek, digits.
_LOOKALIKE = str.maketrans({"о": "o", "ο": "o", "0": "o", "т": "t", "τ": "t", "υ": "u", "р": "p", "ρ": "p",
                            "ӏ": "l", "і": "l", "1": "l", "|": "l", "ι": "l"})
# An opening angle bracket in any guise (after NFKC, U+FF1C and U+FE64 are already "<").
_BRACKET = r"(?:[<‹〈⟨❮❰❬《«˂ᐸ]|\\u[0o]*3c|\\x3c|%3c)"
_SPACE = r"[\s_\-.·•]*"
_LOOKS_LIKE_TAG = re.compile(rf"{_BRACKET}[\s/\\⁄∕／]*tool{_SPACE}output|tool[\s\-.]*_{_SPACE}output")
_NAME = re.compile(r"[^A-Za-z0-9_.:\-]")


def fence(tool: str, output: str, budget_tokens: int = OUTPUT_TOKENS) -> str:
    """Wrap `output` as data, trimmed to a token budget, between tags with a fresh random id."""
    limit = budget_tokens * 4
    trimmed = output if len(output) <= limit else output[:limit] + f"\n…[trimmed {len(output) - limit} chars]"
    safe = neutralise(trimmed)
    boundary = secrets.token_hex(8)
    while boundary in safe:  # never in practice (64 random bits), but then "cannot" holds without odds
        boundary = secrets.token_hex(8)
    name = _NAME.sub("_", tool)[:64]
    return f'<{TAG} tool="{name}" id="{boundary}">\n{safe}\n</{TAG} id="{boundary}">'


def neutralise(text: str) -> str:
    """`text` with everything that looks like a fence tag replaced by REMOVED."""
    skeleton, spans = _skeleton(text)
    found = [(spans[m.start()][0], spans[m.end() - 1][1]) for m in _LOOKS_LIKE_TAG.finditer(skeleton)]
    if not found:
        return text
    parts: list[str] = []
    last = 0
    for start, end in found:
        if end <= last:  # two matches inside one decoded entity: it is already replaced
            continue
        parts += [text[last:max(start, last)], REMOVED]
        last = end
    parts.append(text[last:])
    return "".join(parts)


def looks_like_tag(text: str) -> bool:
    """Whether `text` holds anything a reader could take for a fence tag."""
    return _LOOKS_LIKE_TAG.search(_skeleton(text)[0]) is not None


def _skeleton(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text as a reader would see it, and for each of its characters the span of `text` it came from."""
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        entity = _ENTITY.match(text, i) if text[i] == "&" else None
        end = entity.end() if entity else i + 1
        raw = html.unescape(entity.group()) if entity else text[i]
        for char in _normalise(raw):
            chars.append(char)
            spans.append((i, end))
        i = end
    return "".join(chars), spans


def _normalise(raw: str) -> str:
    kept = "".join(c for c in unicodedata.normalize("NFKD", raw)
                   if c in _KEEP or unicodedata.category(c) not in _DROPPED)
    return kept.casefold().translate(_LOOKALIKE)
