"""What a digest says, and its charts: ledger queries (`data`), words (`text`), PNGs (`charts`), and the service
that composes digests and queues the daily one through the outbox (`service`)."""

from aria.digest.service import Digest, DigestService

__all__ = ["Digest", "DigestService"]
