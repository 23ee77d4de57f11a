"""What the owner sees of the MCP servers: `aria mcp list`, lines for /skills and /status, `aria doctor` checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aria.mcp.hub import McpHub
    from aria.mcp.session import ServerConnection

STATE_MARK = {"up": "✅", "starting": "…", "down": "⚠", "stopped": "·"}


def server_line(connection: ServerConnection) -> str:
    """One server: name, transport, state and why it is down."""
    config = connection.config
    where = config.command if config.command is not None else "Streamable HTTP"
    line = (f"{STATE_MARK[connection.state]} {connection.name}: {connection.state} ({config.transport}, {where}; "
            f"timeout {config.timeout:g}s, risk {config.risk})")
    if connection.state != "up" and connection.error:
        line += f": {connection.error}"
        if connection.failures:
            line += f" (failed {connection.failures}x, reconnecting with backoff)"
    breaker = connection.breaker.state
    if breaker != "closed":
        line += f"; circuit {breaker}"
    return line


def list_text(hub: McpHub) -> str:
    """Every server, its state, and its tools with their risk (`aria mcp list`, `/mcp`)."""
    if not hub.servers:
        return "No MCP servers configured (set ARIA_MCP_CONFIG to a TOML file of [servers.<name>] tables)."
    lines: list[str] = []
    for name, connection in hub.servers.items():
        lines.append(server_line(connection))
        rows = hub.rows.get(name, [])
        for row in rows:
            mark = "" if row.state == "on" else f" [{row.state}: its definition changed; /mcp accept {row.name}]"
            lines.append(f"  • {row.name} ({row.risk}){mark}")
        if not rows:
            lines.append("  (no tools known yet)")
    return "\n".join(lines)


def status_lines(hub: McpHub) -> list[str]:
    """For /status: how many servers are up, and each one that is not."""
    if not hub.servers:
        return []
    up = sum(1 for c in hub.servers.values() if c.state == "up")
    lines = [f"MCP servers: {up} of {len(hub.servers)} up"]
    lines += [f"  {server_line(c)}" for c in hub.servers.values() if c.state != "up"]
    disabled = [r.name for rows in hub.rows.values() for r in rows if r.state == "disabled"]
    if disabled:
        lines.append("  MCP tools disabled until you review their change: " + ", ".join(disabled))
    return lines


def skill_state(hub: McpHub, skill: str) -> str | None:
    """For /skills: the state of the server behind an `mcp:<server>` skill, or None for other skills."""
    connection = hub.servers.get(skill.removeprefix("mcp:")) if skill.startswith("mcp:") else None
    return None if connection is None else server_line(connection)
