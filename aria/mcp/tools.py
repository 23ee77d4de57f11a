"""MCP tools as Aria tools: `<server>__<tool>` specs whose arguments are checked against the server's JSON schema
and whose calls go to the server's connection, so the runner's gate, steps, failure rows and fencing apply as they
do to every built-in tool."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from aria.errors import ToolError, ToolInputError
from aria.mcp.config import ServerConfig
from aria.skills import Risk, ToolContext, ToolSpec, strip_titles

if TYPE_CHECKING:
    from mcp.types import CallToolResult, Tool

MAX_NAME = 64  # OpenAI's limit for a function name
MAX_DESCRIPTION = 500  # what the model reads per tool; the pin still covers the whole text
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
_WORD = re.compile(r"[a-z0-9]+")
Invoke = Callable[[str, dict[str, Any]], Awaitable[str]]


class McpArguments(BaseModel):
    """Arguments for an MCP tool, already checked against its JSON schema; kept as given."""

    model_config = ConfigDict(extra="allow")


def aria_name(server: str, tool: str) -> str:
    """`<server>__<tool>`, a valid OpenAI function name of at most 64 characters (a hash keeps long ones unique)."""
    name = f"{server}__{_INVALID.sub('_', tool)}"
    if len(name) <= MAX_NAME:
        return name
    tail = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9]}_{tail}"


def tool_risk(config: ServerConfig, tool: Tool) -> Risk:
    """The server's risk, or with `auto` the tool's own hints: only a read-only tool is safe."""
    if config.risk != "auto":
        return config.risk
    hints = tool.annotations
    if hints is not None and hints.read_only_hint is True and hints.destructive_hint is not True:
        return "safe"
    return "risky"


def parameters_of(schema: dict[str, Any]) -> dict[str, Any]:
    """The input schema as an OpenAI function's parameters: an object, without titles."""
    params = strip_titles(schema) if schema else {}
    if params.get("type") != "object":
        params = {"type": "object", "properties": params.get("properties", {})}
    params.setdefault("properties", {})
    return dict(params)


@dataclass(frozen=True)
class McpToolSpec(ToolSpec):
    """A tool served by an MCP server: validated against its JSON schema, called through the server's session."""

    server: str = ""
    remote_name: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    invoke: Invoke | None = None

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-tool definition, from the server's own schema."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, arguments: dict[str, Any]) -> BaseModel:
        """Check the arguments against the server's JSON schema, a line per problem."""
        import jsonschema  # with the SDK, only once a server is configured

        validator = jsonschema.Draft202012Validator(self.parameters)
        problems = [f"{'.'.join(str(p) for p in error.absolute_path) or 'arguments'}: {error.message}"
                    for error in sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))]
        if problems:
            raise ToolInputError(f"invalid arguments for {self.name}: " + "; ".join(problems[:5]))
        return McpArguments.model_validate(arguments)

    async def call(self, ctx: ToolContext, arguments: BaseModel) -> Any:
        """Call the tool on its server (the connection applies the timeout and the breaker)."""
        if self.invoke is None:
            raise ToolError(f"{self.name} is not available")
        return await self.invoke(self.remote_name, arguments.model_dump(mode="json"))

    def source(self, arguments: dict[str, Any]) -> str:
        """Where the output comes from, for people."""
        return f"MCP server {self.server} ({self.name})"


def make_spec(config: ServerConfig, tool: Tool, invoke: Invoke | None, *, available: bool = True) -> McpToolSpec:
    """An Aria tool for one listed MCP tool. An unavailable one (disabled pending review) keeps no description or
    schema from the server (only its server's keywords offer it): the model learns only that it is off."""
    name = aria_name(config.name, tool.name)
    # Only what the pin covers reaches the model: a title, outside it, could change unasked.
    about = (tool.description or tool.name).strip()
    if not available:
        about = "Disabled: its definition changed since the owner trusted it; waiting for the owner's review."
    return McpToolSpec(
        name=name, description=about[:MAX_DESCRIPTION], skill=f"mcp:{config.name}", input_model=McpArguments,
        func=_never, wants_ctx=False, timeout=config.timeout + 1.0, risk=tool_risk(config, tool),
        autonomy="ask" if tool_risk(config, tool) == "risky" else "auto", raises=(ToolError,),
        keywords=frozenset(_WORD.findall(tool.name.lower().replace("_", " "))) if available else frozenset(),
        reads="mcp", server=config.name, remote_name=tool.name,
        parameters=parameters_of(tool.input_schema) if available else {"type": "object", "properties": {}},
        invoke=invoke,
    )


def render_result(result: CallToolResult) -> str:
    """A tool result as text for the model: its text parts, else its structured content, else what kinds it had."""
    from mcp.types import TextContent

    texts = [part.text for part in result.content if isinstance(part, TextContent)]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    kinds = sorted({type(part).__name__ for part in result.content})
    return f"(no text: {', '.join(kinds)})" if kinds else "(empty result)"


def _never(**_: Any) -> None:
    raise ToolError("MCP tools are called through their server")  # McpToolSpec.call never reaches this
