"""Scrub secrets from any text before it reaches a log, the database, a message or the model.

A secret is caught as it is and as the encodings a command or page could turn it into: base64 and base64url (also
inside a longer stream such as `env | base64`, where it may start at any of three byte alignments, and wrapped
across lines), hex (any case) and URL encoding. The encoded forms are computed once per secret and matched by one
compiled alternation, longest first.
"""

from __future__ import annotations

import base64
import logging
import re
from urllib.parse import quote, quote_plus

from aria.sanitize import clean_text

PLACEHOLDER = "[redacted]"
MIN_SECRET = 4  # shorter values would redact ordinary words
MIN_ENCODED = 6  # an encoded fragment shorter than this matches too much unrelated text
_WRAP = r"(?:\r?\n)?"  # base64 and hex dumps break lines (base64 every 76 characters, xxd -p every 60)

# Shapes of credentials that should never be stored even if they are not ours (bearer tokens, bot tokens, keys).
_PATTERNS = [
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),  # Telegram bot token
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}\b"),  # OpenAI-style keys
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
]


def base64_forms(secret: bytes) -> set[str]:
    """The base64 and base64url text that holds `secret` whole or inside any longer stream.

    In a stream the secret starts 0, 1 or 2 bytes into a 3-byte group. Encoding it after that many filler bytes and
    keeping only the characters whose 6 bits all come from the secret gives text that appears in any such stream.
    """
    forms = {base64.b64encode(secret).decode()}  # the secret encoded on its own, padding included
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode()
        start = -(-8 * offset // 6)  # the first character with no filler bits
        end = 8 * (offset + len(secret)) // 6  # the last character with no bits of what follows
        forms.add(encoded[start:end])
    forms |= {form.replace("+", "-").replace("/", "_") for form in forms}
    return {form for form in forms if len(form) >= MIN_ENCODED}


def url_forms(secret: str) -> set[str]:
    """The secret percent-encoded, as a URL or a form would carry it."""
    return {quote(secret, safe=""), quote(secret), quote_plus(secret, safe="")} - {secret}


def _url_regex(form: str) -> str:
    """A percent-encoded form, its escapes in any case (%2F, %2f)."""
    parts = re.split(r"(%[0-9A-F]{2})", form)
    return "".join(f"(?i:{part})" if part.startswith("%") else re.escape(part) for part in parts)


def secrets_pattern(secrets: list[str]) -> re.Pattern[str] | None:
    """One alternation matching every secret in every form, longest first; None without secrets."""
    alternatives: dict[str, int] = {}  # regex -> the length of the text it stands for, to order them
    for secret in {s for s in secrets if len(s) >= MIN_SECRET}:
        raw = secret.encode()
        alternatives[re.escape(secret)] = len(secret)
        for form in url_forms(secret):
            alternatives[_url_regex(form)] = len(form)
        for form in base64_forms(raw):
            alternatives[_WRAP.join(map(re.escape, form))] = len(form)
        alternatives["(?i:" + _WRAP.join(raw.hex()) + ")"] = 2 * len(raw)
    if not alternatives:
        return None
    ordered = sorted(alternatives, key=lambda regex: (-alternatives[regex], regex))
    return re.compile("|".join(ordered))


class Redactor:
    """Replaces known secret values (in any of their encodings) and credential-shaped strings with a placeholder
    (and unencodable code points with U+FFFD)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets = secrets_pattern(secrets or [])

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        text = clean_text(text)  # everything stored passes here: SQLite must be able to encode it
        if self._secrets is not None:
            text = self._secrets.sub(PLACEHOLDER, text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + PLACEHOLDER, text)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secrets from every record's message."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._redact(message) or ""
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
