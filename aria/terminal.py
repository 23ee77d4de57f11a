"""The terminal channel (`aria chat`): the same agent loop, without Telegram."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from aria.agent.loop import Progress
from aria.agent.outcome import Outcome
from aria.agent.state import Request
from aria.app import Aria
from aria.approvals import Press
from aria.views import help_text, set_autonomy, skills_text, status_text

TERMINAL_CHAT_ID = 0  # history for the terminal lives under its own chat id
TERMINAL_USER = 0


async def chat(aria: Aria, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Read lines, answer each; /help, /skills, /status work without a model; /quit or EOF ends."""
    interactive = stdin.isatty()
    stdout.write(help_text(aria.caller is not None) + "\n/approve <id>, /reject <id> - decide an approval\n"
                 "/quit - leave\n")
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        reply = await _answer(aria, text, stdout)
        stdout.write(f"aria> {reply}\n")
        stdout.flush()


async def _answer(aria: Aria, text: str, stdout: TextIO) -> str:
    words = text.split()
    command = words[0].lower() if text.startswith("/") else ""
    if command in ("/help", "/start"):
        return help_text(aria.caller is not None)
    if command == "/skills":
        return set_autonomy(aria, words[1:]) if len(words) > 1 else skills_text(aria)
    if command == "/status":
        return status_text(aria)
    if command in ("/approve", "/reject"):
        return await _decide(aria, words, stdout)

    outcome = await aria.agent.run(Request(text=text, trigger="message", channel="terminal",
                                           chat_id=TERMINAL_CHAT_ID), _printer(stdout))
    return _render(outcome)


async def _decide(aria: Aria, words: list[str], stdout: TextIO) -> str:
    if len(words) != 2 or not words[1].isdigit():
        return "Usage: /approve <id> or /reject <id>"
    approval = aria.approvals.get(int(words[1]))
    if approval is None:
        return "No such approval."
    verb = "a" if words[0].lower() == "/approve" else "r"
    result = aria.approvals.decide(Press(approval.id or 0, verb, approval.args_hash[:12]), TERMINAL_USER)
    if result not in ("approved", "rejected"):
        return f"Nothing done: {result.replace('_', ' ')}."
    decided = aria.approvals.get(approval.id or 0)
    assert decided is not None
    return _render(await aria.agent.resume(decided, _printer(stdout)))


def _printer(stdout: TextIO) -> Progress:
    async def progress(note: str) -> None:
        stdout.write(f"  … {note}\n")
        stdout.flush()

    return progress


def _render(outcome: Outcome) -> str:
    if outcome.approval_id is not None:
        return f"{outcome.text}\n(/approve {outcome.approval_id} or /reject {outcome.approval_id})"
    return outcome.text
