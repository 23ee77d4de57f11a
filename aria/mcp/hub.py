"""Every configured MCP server, and their tools in Aria's SkillSet: one skill `mcp:<server>` per server.

At build time each server's tools are registered from their pins (what was last seen and trusted), so a run that
names one while its server is still starting, or is down, is told the server is unavailable (a degraded answer)
instead of "unknown tool". When a server comes up its listing replaces them: include/exclude applied, each
definition checked against its pin, a changed one disabled and the owner asked (aria.mcp.pins).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aria.agent.outcome import Action
from aria.breaker import BreakerBoard
from aria.errors import ToolError
from aria.ledger import Ledger, McpPin
from aria.mcp.config import McpConfig, ServerConfig
from aria.mcp.pins import Decision, PinStore, definition_of, diff_text
from aria.mcp.tools import McpToolSpec, make_spec
from aria.outbox import Outbox
from aria.skills import Skill, SkillSet

if TYPE_CHECKING:
    from mcp.types import Tool

    from aria.mcp.session import ServerConnection

log = logging.getLogger(__name__)
DIFF_CHARS = 2500
CALLBACK = "mcp"


@dataclass(frozen=True)
class ToolRow:
    """One tool of a server, for `aria mcp list` and /skills."""

    name: str
    risk: str
    state: str  # on, disabled (changed, waiting for the owner), declined (kept disabled)


class McpHub:
    """Starts, watches and stops the MCP servers and keeps their tools in the SkillSet."""

    def __init__(self, config: McpConfig, skills: SkillSet, ledger: Ledger, board: BreakerBoard, outbox: Outbox,
                 owner_ids: Sequence[int], *, log_dir: Path | None = None,
                 targets: dict[str, Any] | None = None) -> None:
        self.config = config
        self.skills = skills
        self.ledger = ledger
        self.outbox = outbox
        self.owner_ids = list(owner_ids)
        self.pins = PinStore(ledger)
        self.rows: dict[str, list[ToolRow]] = {}
        if config.servers:
            # The SDK (about 20 MB of modules) is imported only when a server is configured.
            from aria.mcp.session import ServerConnection
        self.servers: dict[str, ServerConnection] = {
            name: ServerConnection(server, ledger, board.get(f"mcp:{name}"), self._listed, log_dir=log_dir,
                                   target=(targets or {}).get(name))
            for name, server in config.servers.items()
        }
        for connection in self.servers.values():
            self._register(connection.config, self._pinned_tools(connection.name))

    def start(self) -> None:
        """Connect every server in the background, in parallel; nothing waits for them."""
        for connection in self.servers.values():
            connection.start()

    async def stop(self) -> None:
        """Close every session."""
        await asyncio.gather(*(c.stop() for c in self.servers.values()))

    async def wait_started(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound for `aria mcp`, not a call's
        """Wait until every server is up or has failed once, at most `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(c.settled.wait() for c in self.servers.values()))
        except TimeoutError:
            pass

    def decide(self, pin_id: int, digest_prefix: str, decision: Decision) -> str:
        """The owner's answer to a changed definition; the tool is re-registered as it now stands."""
        pin = self.pins.decide(pin_id, digest_prefix, decision)
        if pin is None:
            return "Nothing to decide: that change was already decided, or the tool changed again since."
        connection = self.servers.get(pin.server)
        if connection is not None:
            self._register(connection.config, connection.tools or self._pinned_tools(pin.server))
        if decision == "accept":
            return f"Accepted: {pin.server}__{pin.tool} is enabled with its new definition."
        return f"Kept disabled: {pin.server}__{pin.tool} stays off until its definition changes back or you accept it."

    def find_pin(self, name: str) -> McpPin | None:
        """A pin by its Aria tool name (`server__tool`)."""
        server, _, tool = name.partition("__")
        return self.pins.find(server, tool) if tool else None

    # listing ------------------------------------------------------------------------------------------------

    def _listed(self, connection: ServerConnection, tools: list[Tool]) -> None:
        self._register(connection.config, tools, live=True)

    def _register(self, config: ServerConfig, tools: list[Tool], *, live: bool = False) -> None:
        specs: list[McpToolSpec] = []
        rows: list[ToolRow] = []
        connection = self.servers.get(config.name)
        for tool in tools:
            if not config.offers(tool.name):
                continue
            state = "on"
            if live:
                annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else None
                definition = definition_of(tool.description, tool.input_schema, annotations)
                check = self.pins.check(config.name, tool.name, definition)
                if check.news:
                    self._ask_owner(config.name, tool.name, check.pin_id)
                state = "on" if check.state == "trusted" else "disabled" if check.state == "changed" else "declined"
            else:
                pin = self.pins.find(config.name, tool.name)
                if pin is not None and pin.status != "trusted":
                    state = "disabled" if pin.status == "changed" else "declined"
            invoke = connection.call if connection is not None and state == "on" else _refuse_disabled(config.name)
            spec = make_spec(config, tool, invoke, available=state == "on")
            specs.append(spec)
            rows.append(ToolRow(spec.name, spec.risk, state))
        self.rows[config.name] = rows
        skill = Skill(name=f"mcp:{config.name}", description=f"MCP server {config.name} ({_where(config)})",
                      origin=Path(f"mcp:{config.name}"), tools=tuple(specs),
                      keywords=frozenset({config.name.lower(), *(k.lower() for k in config.keywords)}))
        kept = [s for s in self.skills.skills if s.name != skill.name]
        self.skills.skills[:] = [*kept, skill]

    def _pinned_tools(self, server: str) -> list[Tool]:
        """The tools a server had when last seen, from their pins (the trusted definition)."""
        from mcp.types import Tool, ToolAnnotations

        tools: list[Tool] = []
        for pin in self.pins.trusted(server):
            data = json.loads(pin.definition)
            hints = data.get("annotations") or None
            tools.append(Tool(name=pin.tool, description=data.get("description") or None,
                              input_schema=data.get("input_schema") or {"type": "object"},
                              annotations=ToolAnnotations.model_validate(hints) if hints else None))
        return tools

    def _ask_owner(self, server: str, tool: str, pin_id: int) -> None:
        pin = self.pins.get(pin_id)
        if pin is None or pin.pending_definition is None or pin.pending_digest is None:
            return
        diff = diff_text(pin.definition, pin.pending_definition)
        if len(diff) > DIFF_CHARS:
            diff = diff[:DIFF_CHARS] + "\n… (diff clipped)"
        text = (f"MCP server {server} changed the definition of its tool {server}__{tool} since you trusted it. "
                f"The tool is disabled until you accept the change.\n\n{diff}")
        short = pin.pending_digest[:12]
        actions = [Action("Accept", f"{CALLBACK}:a:{pin_id}:{short}"),
                   Action("Keep disabled", f"{CALLBACK}:k:{pin_id}:{short}")]
        log.warning("MCP tool %s__%s changed its definition; disabled until the owner accepts", server, tool)
        self.ledger.add_failure(f"mcp:{server}", ToolError(f"{server}__{tool} changed its definition; disabled "
                                                           "until the owner accepts it"), "refused")
        for owner in self.owner_ids:
            self.outbox.enqueue(owner, text, actions=actions, purpose="alert",
                                dedupe_key=f"mcp-pin:{pin_id}:{short}:{owner}")


def parse_callback(data: str | None) -> tuple[Decision, int, str] | None:
    """`mcp:a:<pin>:<digest>` or `mcp:k:<pin>:<digest>`; None for anything else."""
    parts = (data or "").split(":")
    if len(parts) != 4 or parts[0] != CALLBACK or parts[1] not in ("a", "k"):
        return None
    if not (parts[2].isascii() and parts[2].isdigit() and len(parts[2]) <= 12):
        return None
    if not (parts[3].isascii() and parts[3].isalnum() and 6 <= len(parts[3]) <= 64):
        return None
    return ("accept" if parts[1] == "a" else "keep"), int(parts[2]), parts[3]


def _refuse_disabled(server: str) -> Any:
    async def refuse(tool: str, arguments: dict[str, Any]) -> str:
        raise ToolError(f"{server}__{tool} is disabled: its definition changed and the owner has not accepted it. "
                        "Do not retry; tell the owner.")
    return refuse


def _where(config: ServerConfig) -> str:
    """Where a server runs, without anything secret: the command's name, or the URL's host."""
    if config.command is not None:
        return f"stdio: {Path(config.command).name}"
    from urllib.parse import urlsplit

    return f"http: {urlsplit(config.url or '').hostname or '?'}"

