"""Tools of connected MCP servers (an `aria eval` stand-in: each answers with the output its scenario scripts)."""

from __future__ import annotations

import json

from aria.errors import ToolError
from aria.skills import ToolContext, tool

KEYWORDS = ("mcp", "tracker", "issue", "issues", "ticket", "tickets", "calendar", "crm", "server")
OUTPUTS = "eval-mcp.json"


@tool(timeout=5.0, reads="mcp", keywords=("mcp", "call", "tracker", "issues", "tickets"))
def mcp_call(ctx: ToolContext, server: str, tool: str) -> str:
    """Call a tool of a connected MCP server and return what it answers."""
    path = ctx.settings.data_dir / OUTPUTS
    outputs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    for entry in outputs:
        if entry["server"] == server and entry["tool"] == tool:
            if entry.get("error"):
                raise ToolError(f"MCP server {server} failed: {entry['error']}")
            return str(entry["output"])
    known = ", ".join(f"{e['server']}/{e['tool']}" for e in outputs) or "none"
    raise ToolError(f"no MCP tool {server}/{tool} (connected: {known})")
