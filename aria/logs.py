"""Logging set-up: one format, secrets scrubbed from every record, chatty libraries quietened."""

from __future__ import annotations

import logging

from aria.ledger.redact import RedactingFilter, Redactor


def configure_logging(level: str, secrets: list[str]) -> None:
    """Log to stderr with secrets redacted (httpx logs request URLs, which carry the bot token)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(Redactor(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
