"""Scrub secrets from any text before it reaches a log, the database or a message."""

from __future__ import annotations

import logging
import re

from aria.sanitize import clean_text

# Shapes of credentials that should never be stored even if they are not ours (bearer tokens, bot tokens, keys).
_PATTERNS = [
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),  # Telegram bot token
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}\b"),  # OpenAI-style keys
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
]


class Redactor:
    """Replaces known secret values and credential-shaped strings with a placeholder (and unencodable code points
    with U+FFFD)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets = sorted({s for s in (secrets or []) if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        text = clean_text(text)  # everything stored passes here: SQLite must be able to encode it
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
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
