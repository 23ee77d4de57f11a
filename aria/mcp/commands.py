"""The owner's `/mcp` command: the servers and their tools, and decisions on changed tool definitions for channels
without buttons (`/mcp accept <server__tool>`, `/mcp keep <server__tool>`)."""

from __future__ import annotations

from aria.mcp.hub import McpHub
from aria.mcp.views import list_text

USAGE = "Usage: /mcp, /mcp accept <server__tool>, /mcp keep <server__tool>"


def mcp_text(hub: McpHub, args: list[str]) -> str:
    """The answer to `/mcp [accept|keep <tool>]`."""
    if not args:
        return list_text(hub)
    if len(args) != 2 or args[0] not in ("accept", "keep"):
        return USAGE
    pin = hub.find_pin(args[1])
    if pin is None or pin.id is None or pin.pending_digest is None or pin.status == "trusted":
        return f"No changed MCP tool named {args[1]!r} is waiting for a decision."
    return hub.decide(pin.id, pin.pending_digest, "accept" if args[0] == "accept" else "keep")
