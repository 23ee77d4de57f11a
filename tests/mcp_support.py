"""Helpers for the MCP tests: a servers file for the fake servers (tests/fakes/mcp_servers.py), and waiting for a
server to connect."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from aria.app import Aria

FAKES = Path(__file__).resolve().parent / "fakes" / "mcp_servers.py"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def write_config(path: Path, servers: dict[str, dict[str, Any]]) -> Path:
    """A servers file with one [servers.<name>] table each."""
    lines: list[str] = []
    for name, fields in servers.items():
        lines.append(f"[servers.{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in fields.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def fake_server(kind: str, **fields: Any) -> dict[str, Any]:
    """A [servers.x] table running one of the fake servers over stdio."""
    return {"command": sys.executable, "args": [str(FAKES), kind], **fields}


async def connected(aria: Aria, *names: str, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    """Start the MCP servers and wait until the named ones are up."""
    aria.mcp.start()
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(aria.mcp.servers[name].connected.wait() for name in names))
