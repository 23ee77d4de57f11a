"""The terminal channel (`aria chat`): the same agent loop, without Telegram."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from aria.agent.state import Request
from aria.app import Aria
from aria.views import help_text, skills_text, status_text

TERMINAL_CHAT_ID = 0  # history for the terminal lives under its own chat id


async def chat(aria: Aria, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Read lines, answer each; /help, /skills, /status work without a model; /quit or EOF ends."""
    interactive = stdin.isatty()
    stdout.write(help_text(aria.caller is not None).replace("/help", "/help, /quit") + "\n")
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
    command = text.split()[0].lower() if text.startswith("/") else ""
    if command in ("/help", "/start"):
        return help_text(aria.caller is not None)
    if command == "/skills":
        return skills_text(aria)
    if command == "/status":
        return status_text(aria)

    async def progress(note: str) -> None:
        stdout.write(f"  … {note}\n")
        stdout.flush()

    outcome = await aria.agent.run(Request(text=text, trigger="message", channel="terminal",
                                           chat_id=TERMINAL_CHAT_ID), progress)
    return outcome.text
