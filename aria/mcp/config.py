"""The MCP servers file (ARIA_MCP_CONFIG): one `[servers.<name>]` table per server.

    [servers.time]
    command = "mcp-server-time"          # stdio: command, args, env, cwd
    timeout = 10                         # seconds per call (and per connection attempt)
    risk = "auto"                        # safe | risky | auto (readOnlyHint decides; unannotated is risky)
    keywords = ["time", "timezone"]      # words that offer this server's tools to a request

    [servers.tracker]
    url = "https://mcp.example/mcp"      # Streamable HTTP: url, headers
    headers = { Authorization = "Bearer ${TRACKER_TOKEN}" }   # ${VAR} is read from the environment

Values of `env` and `headers` may name environment variables as `${VAR}`, so secrets stay out of the file; the values
read that way are secrets (scrubbed from logs, the ledger and what the model sees).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aria.errors import ConfigError

ServerRisk = Literal["safe", "risky", "auto"]
SERVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SETTING = "ARIA_MCP_CONFIG"


class ServerConfig(BaseModel):
    """One MCP server: how to reach it and how far to trust its tools."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=30.0, gt=0, le=600)
    risk: ServerRisk = "auto"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("set either command (stdio) or url (Streamable HTTP), not both")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if self.url is None and self.headers:
            raise ValueError("headers only apply to a url server")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        """How Aria talks to it."""
        return "stdio" if self.command is not None else "http"

    def offers(self, tool: str) -> bool:
        """Whether the include/exclude lists let this tool through."""
        return (not self.include or tool in self.include) and tool not in self.exclude

    def resolved_env(self, environ: dict[str, str]) -> dict[str, str]:
        """`env` with ${VAR} read from the environment."""
        return {key: expand(value, environ, f"servers.{self.name}.env.{key}") for key, value in self.env.items()}

    def resolved_headers(self, environ: dict[str, str]) -> dict[str, str]:
        """`headers` with ${VAR} read from the environment."""
        return {key: expand(value, environ, f"servers.{self.name}.headers.{key}")
                for key, value in self.headers.items()}

    def secrets(self, environ: dict[str, str]) -> list[str]:
        """The values read from the environment: secrets by construction."""
        names = [m for value in [*self.env.values(), *self.headers.values()] for m in _VARIABLE.findall(value)]
        return [environ[n] for n in names if environ.get(n)]


class McpConfig(BaseModel):
    """Every configured server, by name."""

    model_config = ConfigDict(extra="forbid")

    servers: dict[str, ServerConfig] = Field(default_factory=dict)

    def secrets(self, environ: dict[str, str] | None = None) -> list[str]:
        """Every secret value the servers' settings read from the environment."""
        env = dict(os.environ) if environ is None else environ
        return [value for server in self.servers.values() for value in server.secrets(env)]


def expand(value: str, environ: dict[str, str], where: str) -> str:
    """Replace ${VAR} by its value; a variable that is not set is a configuration error naming it."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError([f"{SETTING}: {where} names ${{{name}}}, which is not set in the environment"])
        return environ[name]

    return _VARIABLE.sub(one, value)


def load_mcp_config(path: Path | None) -> McpConfig:
    """Read the servers file; no file configured means no servers. Problems name the file and the field."""
    if path is None:
        return McpConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{SETTING}: cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{SETTING}: {path} is not valid TOML: {exc}"]) from None
    try:
        config = McpConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{SETTING}: {path}: {'.'.join(str(p) for p in err['loc'])}: "
                    f"{err['msg'].removeprefix('Value error, ')}"
                    for err in exc.errors(include_input=False, include_url=False)]
        raise ConfigError(problems) from None
    for name, server in config.servers.items():
        if not SERVER_NAME.match(name):
            raise ConfigError([f"{SETTING}: {path}: servers.{name}: a server name is 1 to 24 lowercase letters, "
                               "digits, - or _, starting with a letter"])
        server.name = name
    return config
