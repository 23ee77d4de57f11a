"""Bot API requests that tell listeners when Telegram answered: the outbox wakes its backed-off messages on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from telegram.request import HTTPXRequest, RequestData

BOT_POOL_SIZE = 256  # what python-telegram-bot uses for the bot's own requests


class SignallingRequest(HTTPXRequest):
    """HTTPXRequest that calls each listener after a round trip Telegram answered without an error status."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("connection_pool_size", BOT_POOL_SIZE)
        super().__init__(**kwargs)
        self.listeners: list[Callable[[], None]] = []

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        """Send as HTTPXRequest does; a status below 400 means Telegram is reachable and answering."""
        code, payload = await super().do_request(url, method, request_data, *args, **kwargs)
        if code < 400:
            for listener in self.listeners:
                listener()
        return code, payload
