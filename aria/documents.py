"""Reading a document someone sent: text-like files only, up to a size limit, decoded without ever failing on bytes.

Channel-neutral: a file name and its bytes in, the file name and its text out (`read_document`), or a
`DocumentRefused` whose message tells the owner why and what would work. What a document says is never the
owner's words: callers fence it as data and taint the run with `document_source` (see aria.agent.provenance).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

from aria.agent.fence import neutralise
from aria.errors import AriaError
from aria.sanitize import clean_text

TEXT_SUFFIXES = (".txt", ".log", ".md", ".json", ".csv", ".yaml", ".yml")
NAME_CHARS = 100  # a file name shown to the owner and the model, at most
# Past these shares of the decoded text, the bytes are not text in any encoding worth reading as UTF-8.
_MAX_REPLACED = 0.05  # U+FFFD from undecodable bytes
_MAX_CONTROL = 0.01  # control characters other than tab, newline, carriage return and form feed
_TEXT_CONTROLS = frozenset("\t\n\r\f")


class DocumentRefused(AriaError):
    """A document Aria does not read: the message says why and what would work, for the owner."""


@dataclass(frozen=True)
class Document:
    """A document's (cleaned) file name and its text."""

    name: str
    text: str


def check_document(name: str | None, size: int | None, max_bytes: int) -> str:
    """The cleaned file name of a document that may be read, judged before downloading it: a text-like type and a
    size (when known) within `max_bytes`. Raises DocumentRefused otherwise."""
    shown = display_name(name)
    suffix = PurePosixPath(shown.lower()).suffix
    if suffix not in TEXT_SUFFIXES:
        kinds = ", ".join(TEXT_SUFFIXES)
        raise DocumentRefused(f"I can't read {shown}: I only read text files ({kinds}). Paste the part that "
                              "matters as a message, or send it as one of those.")
    if size is not None and size > max_bytes:
        raise oversize(shown, size, max_bytes)
    return shown


def oversize(shown: str, size: int, max_bytes: int) -> DocumentRefused:
    """The refusal of a document of `size` bytes, over the limit."""
    return DocumentRefused(f"I can't read {shown}: it is {size_text(size)}, over my limit of {size_text(max_bytes)} "
                           "(ARIA_DOCUMENT_MAX_BYTES). Send the part that matters, or raise the limit.")


def read_document(name: str | None, data: bytes, max_bytes: int) -> Document:
    """A text-like document's name and text: UTF-8 (a byte-order mark dropped), undecodable bytes replaced; refused
    (DocumentRefused) when it is not a text type, is over `max_bytes`, or its bytes are binary."""
    shown = check_document(name, len(data), max_bytes)
    if b"\x00" in data:
        raise DocumentRefused(f"I can't read {shown}: it holds binary data, not text (or text in UTF-16, which I "
                              "don't read; save it as UTF-8).")
    text = clean_text(data.decode("utf-8-sig", errors="replace"))
    if text:
        replaced = text.count("\ufffd") / len(text)
        controls = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in _TEXT_CONTROLS) / len(text)
        if replaced > _MAX_REPLACED or controls > _MAX_CONTROL:
            raise DocumentRefused(f"I can't read {shown}: it does not look like UTF-8 text. Save it as UTF-8, or "
                                  "paste the part that matters.")
    if not text.strip():
        raise DocumentRefused(f"{shown} is empty: there is nothing in it to read.")
    return Document(shown, text)


def display_name(name: str | None) -> str:
    """A file name as it may be shown anywhere: one line, printable, at most NAME_CHARS characters. A sender chooses
    it, so no line breaks or control characters get through to a prompt or a message."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(c if unicodedata.category(c)[0] not in "CZ" or c == " " else "_" for c in clean_text(base))
    printable = neutralise(" ".join(printable.split()))
    if len(printable) > NAME_CHARS:
        stem, dot, suffix = printable.rpartition(".")
        keep = NAME_CHARS - len(suffix) - 2
        printable = f"{stem[:keep]}….{suffix}" if dot and 0 < len(suffix) < 10 else printable[:NAME_CHARS - 1] + "…"
    return printable or "the file"


def document_source(name: str, via: str = "Telegram") -> str:
    """How a document is named as the source of what it led to (approvals, provenance)."""
    return f"the document {name} ({via})"


def size_text(size: int) -> str:
    """A byte count for people: 512 bytes, 32 KiB, 1.5 MiB."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.3g} KiB"
    return f"{size / (1024 * 1024):.3g} MiB"
