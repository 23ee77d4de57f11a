"""The MCP servers file: clear errors naming the setting, secrets from the environment, valid tool names, risk."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.types import Tool, ToolAnnotations

from aria.errors import ConfigError
from aria.mcp.config import load_mcp_config
from aria.mcp.tools import aria_name, make_spec, tool_risk


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "mcp.toml"
    path.write_text(text)
    return load_mcp_config(path)


def test_a_servers_file_reads_stdio_and_http_servers(tmp_path: Path) -> None:
    config = _load(tmp_path, """
[servers.time]
command = "mcp-server-time"
timeout = 10
risk = "auto"
keywords = ["time", "clock"]

[servers.tracker]
url = "https://mcp.example/mcp"
headers = { Authorization = "Bearer ${TRACKER_TOKEN}" }
exclude = ["delete_issue"]
""")
    time, tracker = config.servers["time"], config.servers["tracker"]  # type: ignore[attr-defined]
    assert (time.name, time.transport, time.timeout, time.keywords) == ("time", "stdio", 10, ["time", "clock"])
    assert (tracker.transport, tracker.offers("delete_issue"), tracker.offers("list_issues")) == ("http", False, True)
    environ = {"TRACKER_TOKEN": "tok-1234567890"}
    assert tracker.resolved_headers(environ) == {"Authorization": "Bearer tok-1234567890"}
    assert config.secrets(environ) == ["tok-1234567890"]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"ARIA_MCP_CONFIG: servers.tracker.headers.Authorization names "
                                          r"\$\{TRACKER_TOKEN\}, which is not set"):
        tracker.resolved_headers({})


@pytest.mark.parametrize(("text", "problem"), [
    ('[servers.x]\ntimeout = 3', "set either command (stdio) or url"),
    ('[servers.x]\ncommand = "a"\nurl = "http://h/mcp"', "set either command (stdio) or url"),
    ('[servers.x]\ncommand = "a"\nrisk = "maybe"', "servers.x.risk"),
    ('[servers.x]\ncommand = "a"\ntimeout = -1', "servers.x.timeout"),
    ('[servers.x]\ncommand = "a"\ncolour = "red"', "servers.x.colour"),
    ('[servers."Bad Name"]\ncommand = "a"', "a server name is 1 to 24 lowercase"),
    ('[servers.x\ncommand = "a"', "is not valid TOML"),
])
def test_a_bad_servers_file_is_a_clear_error_naming_the_setting(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert all(p.startswith("ARIA_MCP_CONFIG: ") for p in caught.value.problems)
    assert problem in str(caught.value)


def test_tool_names_are_valid_openai_names_of_at_most_64_characters() -> None:
    assert aria_name("time", "get_current_time") == "time__get_current_time"
    assert aria_name("web", "fetch.page v2") == "web__fetch_page_v2"
    long_a, long_b = aria_name("server", "x" * 80 + "a"), aria_name("server", "x" * 80 + "b")
    assert len(long_a) == 64 and long_a != long_b


def test_auto_risk_trusts_only_read_only_hints(tmp_path: Path) -> None:
    config = _load(tmp_path, '[servers.s]\ncommand = "a"\n[servers.r]\ncommand = "a"\nrisk = "risky"')
    auto, risky = config.servers["s"], config.servers["r"]  # type: ignore[attr-defined]
    read_only = Tool(name="look", input_schema={"type": "object"}, annotations=ToolAnnotations(read_only_hint=True))
    bare = Tool(name="act", input_schema={"type": "object"})
    destructive = Tool(name="rm", input_schema={"type": "object"},
                       annotations=ToolAnnotations(read_only_hint=True, destructive_hint=True))
    assert [tool_risk(auto, t) for t in (read_only, bare, destructive)] == ["safe", "risky", "risky"]
    assert tool_risk(risky, read_only) == "risky"
    spec = make_spec(auto, read_only, None)
    assert spec.schema()["function"] == {"name": "s__look", "description": "look",
                                         "parameters": {"type": "object", "properties": {}}}
