"""What a scenario runs against: its pages on a local web server, a port nobody listens on, the scripted model, the
owner's chat (the eval channel), its MCP servers (real processes, aria/evals/mcp_server.py) and its notes (in the
knowledge store)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aria.agent.outcome import Action
from aria.app import Aria
from aria.channel import Quiet
from aria.evals.scenario import Note, Page, Scenario, Turn
from aria.knowledge import Knowledge
from aria.outbox import row_actions

OWNER = 1001  # the owner's user and chat id in every eval instance
MCP_TIMEOUT = 10.0  # an eval MCP server's per-call timeout unless the scenario sets one
MCP_START_SECONDS = 20.0  # how long the first step waits for the scenario's MCP servers to be up (or fail)


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


def write_mcp(scenario: Scenario, folder: Path) -> Path | None:
    """The scenario's MCP servers: a spec per server (what aria.evals.mcp_server serves) and the servers file that
    starts each as `python -m aria.evals.mcp_server SPEC` (ARIA_MCP_CONFIG). None when it declares none."""
    servers: dict[str, list[dict[str, object]]] = {}
    for tool in scenario.mcp:
        servers.setdefault(tool.server, []).append({
            "name": tool.tool, "description": tool.description, "changed_description": tool.changed_description,
            "read_only": tool.read_only, "input_schema": tool.input_schema, "output": tool.output,
            "repeat": tool.repeat, "error": tool.error, "hang": tool.hang, "crash": tool.crash})
    if not servers:
        return None
    lines: list[str] = []
    for name, tools in servers.items():
        spec = folder / f"mcp-{name}.json"
        spec.write_text(json.dumps({"name": name, "tools": tools, "starts_file": str(folder / f"mcp-{name}.starts")}),
                        encoding="utf-8")
        timeouts = [t.timeout for t in scenario.mcp if t.server == name and t.timeout is not None]
        lines += [f"[servers.{name}]", f"command = {json.dumps(sys.executable)}",
                  f"args = {json.dumps(['-m', 'aria.evals.mcp_server', str(spec)])}",
                  f"timeout = {min(timeouts, default=MCP_TIMEOUT)}", ""]
    config = folder / "mcp.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    return config


NOTE_SOURCES = {"owner": "owner (chat)", "runbook": "runbooks/{title}.md", "web": "https://notes.example/{title}",
                "tool": "tool:eval"}


def store_notes(knowledge: Knowledge, notes: list[Note]) -> None:
    """The scenario's notes in its knowledge store, in order (so note N of the list is note id N), each replacing
    the earlier one it names."""
    ids: list[int] = []
    for note in notes:
        slug = "-".join(note.title.lower().split()) or "note"
        source = note.source or NOTE_SOURCES[note.kind].format(title=slug)
        stored = knowledge.store.remember(note.text, source=source, kind=note.kind,
                                          supersedes=ids[note.replaces - 1] if note.replaces else None)
        assert stored.id is not None
        ids.append(stored.id)
        if note.title:
            _retitle(knowledge, stored.id, note.title)


def _retitle(knowledge: Knowledge, note_id: int, title: str) -> None:
    from aria.knowledge import Note as StoredNote

    with knowledge.ledger.write() as session:
        row = session.get(StoredNote, note_id)
        assert row is not None
        row.title = title
        session.add(row)


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
