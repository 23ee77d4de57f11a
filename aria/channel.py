"""The channel side of a run: where requests come from and replies go (Telegram, the terminal, events).

A channel turns its input into a `Request` for the run service and implements `Channel`. Every reply is an outbox
row written before it is sent; `ReplyWriter` writes a run's reply in the transaction that finishes the run.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from sqlalchemy import Connection

from aria.agent.outcome import Outcome
from aria.outbox import Outbox


class Live(Protocol):
    """A channel's presence while one run works: typing, and a progress note the answer may replace."""

    @property
    def message_id(self) -> int | None:
        """The progress message the answer replaces, once there is one."""

    async def __aenter__(self) -> Live: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def note(self, text: str) -> None:
        """Show what the run is doing now."""

    def draft(self, text: str) -> None:
        """Show the answer so far while the model writes it (throttled by the channel; never blocks)."""


class Channel(Protocol):
    """Where requests come from and replies go: Telegram, the terminal, events."""

    name: str  # written on outbox rows; a channel delivers only its own rows

    def live(self, chat_id: int | None) -> Live:
        """Progress for one run in a chat."""

    async def deliver(self, outbox_id: int) -> int | None:
        """Send a written outbox row now if its chat has nothing older waiting; the message id when it went out."""

    async def tell_directly(self, chat_id: int, text: str) -> bool:
        """Send without the ledger (it cannot be written); False when that failed too."""

    async def start(self) -> None:
        """Begin delivering (rows an earlier process left undelivered go out first)."""

    async def stop(self) -> None:
        """Stop delivering after the message in flight; undelivered rows stay for the next start."""


class Quiet:
    """No progress to show (events, recovery): the reply still goes out when the run ends."""

    message_id: int | None = None

    async def __aenter__(self) -> Quiet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def note(self, text: str) -> None:
        return None

    def draft(self, text: str) -> None:
        return None


class ReplyWriter:
    """The agent's `reply` hook: writes a run's reply as an outbox row in the transaction that finishes the run,
    and remembers the row's id for delivery."""

    def __init__(self, outbox: Outbox, channel: Channel | None, chat_id: int | None, presence: Live, *,
                 notify: bool = True) -> None:
        self.outbox = outbox
        self.channel = channel
        self.chat_id = chat_id
        self.presence = presence
        self.notify = notify  # False: only an approval request is sent (it cannot be decided unseen)
        self.row_id: int | None = None

    def __call__(self, conn: Connection, outcome: Outcome) -> None:
        if self.chat_id is None or not (self.notify or outcome.approval_id is not None):
            return
        name = self.channel.name if self.channel is not None else "telegram"
        values = self.outbox.values(
            self.chat_id, outcome.text, actions=outcome.actions, run_id=outcome.run_id, channel=name,
            purpose="approval" if outcome.approval_id is not None else "answer", approval_id=outcome.approval_id,
            edit_message_id=self.presence.message_id)
        self.row_id = self.outbox.insert(conn, values)
