"""The fakes' HTTP server thread: it lives in `aria.evals.serving`, since `aria eval` serves its pages with it too."""

from aria.evals.serving import ASGIApp, ServedFake, ServerThread, parse_multipart, wait_until, wait_until_sync

__all__ = ["ASGIApp", "ServedFake", "ServerThread", "parse_multipart", "wait_until", "wait_until_sync"]
