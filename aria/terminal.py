"""The terminal channel (`aria chat`): the same run service, commands and approvals as Telegram, without Telegram.

Replies are outbox rows like Telegram's (channel `terminal`), printed when delivered; charts (/digest, /cost) are
written as PNG files under the data folder and their path printed. Approvals are decided with /approve and /reject.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Literal, TextIO

from aria import commands
from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import REFUSALS, Press
from aria.channel import Live
from aria.errors import LedgerUnavailable
from aria.sanitize import clean_text
from aria.views import help_text

TERMINAL_CHAT_ID = 0  # history for the terminal lives under its own chat id
TERMINAL_USER = 0
CHANNEL = "terminal"


class TerminalLive:
    """Progress notes as indented lines."""

    message_id: int | None = None

    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def __aenter__(self) -> TerminalLive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def note(self, text: str) -> None:
        """Print the current step."""
        self._out.write(f"  … {text}\n")
        self._out.flush()

    def draft(self, text: str) -> None:
        """The terminal prints the finished answer only (a partial one would be printed twice)."""


class TerminalChannel:
    """Prints outbox rows of the terminal channel, in order; marks each delivered once printed."""

    name = CHANNEL

    def __init__(self, aria: Aria, out: TextIO) -> None:
        self.aria = aria
        self.out = out
        self._charts = aria.settings.data_dir / "charts"

    def live(self, chat_id: int | None) -> Live:
        """Progress lines for a run."""
        return TerminalLive(self.out)

    async def deliver(self, outbox_id: int) -> int | None:
        """Print every terminal row due up to this one (older ones first), so nothing is shown out of order."""
        await self.flush()
        return None

    async def flush(self) -> int:
        """Print the rows waiting for the terminal; returns how many."""
        outbox = self.aria.outbox
        rows = outbox.pending(self.aria.ledger.now(), CHANNEL)
        for row in rows:
            assert row.id is not None
            text = row.text
            if row.kind == "edit":
                text = f"(approval message) {text}"
            if row.kind == "document" and row.payload is not None:
                exports = self.aria.settings.data_dir / "exports"
                exports.mkdir(parents=True, exist_ok=True)
                path = exports / Path(row.file_name or f"export-{row.id}").name
                path.write_bytes(row.payload)
                text = f"{text}\n(file saved to {path})"
            elif row.payload is not None:
                self._charts.mkdir(parents=True, exist_ok=True)
                path = self._charts / f"chart-{row.id}.png"
                path.write_bytes(row.payload)
                text = f"{text}\n(chart saved to {path})"
            if row.approval_id is not None:
                text = f"{text}\n(/approve {row.approval_id} or /reject {row.approval_id})"
            elif row.reply_markup and "retry:" in row.reply_markup and row.run_id is not None:
                text = f"{text}\n(send the request again to retry)"
            elif row.reply_markup and '"cfg:' in row.reply_markup:
                change = row.reply_markup.split('"cfg:', 1)[1].split(":", 1)[0]
                text = f"{text}\n(/budget confirm {change} or /budget cancel {change})"
            elif row.reply_markup and f'"continue:{row.run_id}"' in row.reply_markup:
                text = f"{text}\n(/continue to carry on)"
            self.out.write(f"aria> {text}\n")
            self.out.flush()
            outbox.mark_delivered(row.id, None)
        return len(rows)

    async def tell_directly(self, chat_id: int, text: str) -> bool:
        """Print without the ledger."""
        self.out.write(f"aria> {text}\n")
        self.out.flush()
        return True

    async def start(self) -> None:
        """Print what an earlier `aria chat` left unprinted."""
        await self.flush()

    async def stop(self) -> None:
        """Nothing runs in the background."""


async def chat(aria: Aria, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Read lines, answer each; commands work without a model; /quit or EOF ends. Starts and stops Aria as
    `aria run` does, so recovery, reminders and the scheduler work here too."""
    channel = TerminalChannel(aria, stdout)
    stdout.write(commands_help(aria))
    await aria.start(channel)
    try:
        await _read_loop(aria, channel, stdin, stdout)
    finally:
        await aria.stop()


def commands_help(aria: Aria) -> str:
    """The help text, with the terminal's own commands."""
    return (help_text(aria.caller is not None) + "\n/approve <id>, /reject <id> - decide an approval\n"
            "/continue - carry on the last answer cut at the output limit\n/quit - leave\n")


async def _read_loop(aria: Aria, channel: TerminalChannel, stdin: TextIO, stdout: TextIO) -> None:
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            break
        text = clean_text(line).strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        await _answer(aria, channel, text)


async def _answer(aria: Aria, channel: TerminalChannel, text: str) -> None:
    words = text.split()
    command = words[0].lstrip("/").lower() if text.startswith("/") else ""
    if command in ("approve", "reject"):
        await _decide(aria, channel, words)
        return
    if command == "continue":
        cut = aria.ledger.last_cut_run(TERMINAL_CHAT_ID)
        if cut is None or await aria.runs.carry_on(cut, channel, TERMINAL_CHAT_ID) is None:
            await channel.tell_directly(TERMINAL_CHAT_ID, "No answer is waiting to be continued.")
        return
    if command:
        replies = await commands.answer(aria, command, words[1:], chat_id=TERMINAL_CHAT_ID, user_id=TERMINAL_USER)
        await commands.send(aria, channel, TERMINAL_CHAT_ID, replies)
        return
    await aria.runs.handle(Request(text=text, trigger="message", channel=CHANNEL, chat_id=TERMINAL_CHAT_ID,
                                   user_id=TERMINAL_USER), channel)


async def _decide(aria: Aria, channel: TerminalChannel, words: list[str]) -> None:
    if len(words) != 2 or not (words[1].isascii() and words[1].isdigit() and len(words[1]) <= 18):
        await channel.tell_directly(TERMINAL_CHAT_ID, "Usage: /approve <id> or /reject <id>")
        return
    approval = aria.approvals.get(int(words[1]))
    if approval is None or approval.id is None:
        await channel.tell_directly(TERMINAL_CHAT_ID, "No such approval.")
        return
    verb: Literal["a", "r"] = "a" if words[0].lower() == "/approve" else "r"
    press = Press(approval.id, verb, approval.args_hash[:12])
    try:
        result = await aria.runs.decide(press, TERMINAL_USER, channel)
    except LedgerUnavailable as exc:
        await channel.tell_directly(TERMINAL_CHAT_ID, f"Nothing done: {exc}.")
        return
    if result not in ("approved", "rejected"):
        await channel.tell_directly(TERMINAL_CHAT_ID, REFUSALS.get(result, "Nothing was done."))


__all__ = ["TERMINAL_CHAT_ID", "TerminalChannel", "chat"]
