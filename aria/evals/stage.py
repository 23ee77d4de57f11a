"""What a scenario runs against: its pages on a local web server, a port nobody listens on, the scripted model, the
owner's chat (the eval channel), and the sources the stand-in tools read."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aria.agent.outcome import Action
from aria.app import Aria
from aria.channel import Quiet
from aria.evals.scenario import Page, Scenario, Turn
from aria.evals.standins.documents import FOLDER
from aria.evals.standins.mcp import OUTPUTS
from aria.evals.standins.notes import NOTES
from aria.outbox import row_actions

OWNER = 1001  # the owner's user and chat id in every eval instance


def pages_app(pages: dict[str, Page]) -> Starlette:
    """Serve pages by path (the dict is filled once the scenario's placeholders are); anything else is a 404."""

    async def serve(request: Request) -> Response:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        page = pages.get(path) or pages.get(request.url.path)
        if page is None:
            return Response("Not found.", status_code=404, media_type="text/plain")
        if page.delay:
            await asyncio.sleep(page.delay)
        return Response(page.body * page.repeat, status_code=page.status, media_type=page.content_type,
                        headers=page.headers)

    return Starlette(routes=[Route("/{path:path}", serve, methods=["GET", "HEAD"])])


def closed_port() -> int:
    """A loopback port nothing listens on (borrowed from the OS and released): a connector that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_sources(scenario: Scenario, data_dir: Path) -> None:
    """The files, MCP outputs and notes the stand-in tools serve, in the eval's data folder."""
    folder = data_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for file in scenario.files:
        (folder / file.name).write_text(file.text * file.repeat, encoding="utf-8")
    outputs = [{"server": m.server, "tool": m.tool, "output": m.output * m.repeat, "error": m.error}
               for m in scenario.mcp]
    (data_dir / OUTPUTS).write_text(json.dumps(outputs), encoding="utf-8")
    (data_dir / NOTES).write_text(json.dumps([n.model_dump() for n in scenario.notes]), encoding="utf-8")


def script(model: object, turns: list[Turn]) -> None:
    """Queue the scripted model's replies, in order."""
    from aria.evals.model_server import FakeOpenAI

    assert isinstance(model, FakeOpenAI)
    for turn in turns:
        for _ in range(turn.times):
            if turn.error is not None:
                model.enqueue_error(turn.error, retry_after=turn.retry_after, model=turn.model)
            elif turn.malformed:
                model.enqueue_malformed(model=turn.model)
            elif turn.hang is not None:
                model.enqueue_hang(turn.hang, model=turn.model)
            elif turn.stall is not None:
                model.enqueue_stall(turn.text or "", turn.stall_after, turn.stall, model=turn.model)
            elif turn.calls:
                model.enqueue_tool_calls([{"name": c.name, "arguments": c.arguments} for c in turn.calls],
                                         text=turn.text, usage=turn.usage, model=turn.model)
            else:
                model.enqueue_text(turn.text or "", usage=turn.usage, model=turn.model)


@dataclass
class Message:
    """One message the owner got (or an edit of one)."""

    text: str
    kind: str
    purpose: str
    run_id: int | None
    approval_id: int | None
    actions: list[Action] = field(default_factory=list)


class EvalChannel:
    """The owner's chat in an eval: every delivered outbox row is recorded as a message the owner got. It is named
    `telegram` because the run service answers every non-terminal run (events too) on the channel of that name."""

    name = "telegram"

    def __init__(self, aria: Aria) -> None:
        self.aria = aria
        self.messages: list[Message] = []

    def live(self, chat_id: int | None) -> Quiet:
        """No progress notes: only what is delivered counts."""
        return Quiet()

    async def deliver(self, outbox_id: int) -> int | None:
        """Record every row due for this channel, oldest first, and mark it delivered."""
        outbox = self.aria.outbox
        for row in outbox.pending(self.aria.ledger.now(), self.name):
            assert row.id is not None
            self.messages.append(Message(row.text, row.kind, row.purpose, row.run_id, row.approval_id,
                                         row_actions(row)))
            outbox.mark_delivered(row.id, len(self.messages))
        return None

    async def tell_directly(self, chat_id: int, text: str) -> bool:
        """A message sent without the ledger."""
        self.messages.append(Message(text, "text", "direct", None, None))
        return True

    async def start(self) -> None:
        """Deliver what an earlier instance on this data folder left undelivered (after a restart)."""
        await self.deliver(0)

    async def stop(self) -> None:
        """Nothing runs in the background."""
