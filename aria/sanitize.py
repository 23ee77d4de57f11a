"""Text that can always be stored, sent and encoded: lone surrogates and other unencodable code points replaced.

Telegram, the model endpoint and SQLite all want valid UTF-8. A lone surrogate (from a broken client, a bad
decoder, or a model that splits an emoji) cannot be encoded, so it would crash whatever touches it first.
"""

from __future__ import annotations


def clean_text(text: str) -> str:
    """`text` with every code point that UTF-8 cannot encode replaced by U+FFFD (valid text comes back as is)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A surrogate pair that was split into two code points is joined again; a lone half becomes U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_optional(text: str | None) -> str | None:
    """clean_text for an optional value."""
    return None if text is None else clean_text(text)


def shorten(text: str, limit: int = 80) -> str:
    """One line of at most `limit` characters, for quoting a request back to the owner."""
    text = " ".join(clean_text(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
