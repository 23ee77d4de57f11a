"""End to end against real MCP servers from PyPI (mcp-server-time, mcp-server-git), installed by a fixture into a
virtual environment of their own, cached by version under ~/.cache/aria-test-mcp/ so re-runs start at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aria.agent.state import Request
from aria.app import Aria
from tests.conftest import OWNER, aria_cli, eventually, polling
from tests.mcp_support import connected, fake_server, write_config

SERVERS = ("mcp-server-time==2026.10.19", "mcp-server-git==2026.10.19")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aria-test-mcp"
MakeAria = Callable[..., Aria]


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def real_servers() -> Iterator[Path]:
    """The bin folder of a venv holding the PyPI servers; skipped only when the registry cannot be reached."""
    key = "-".join(s.replace("==", "_") for s in SERVERS) + f"-py{sys.version_info.major}{sys.version_info.minor}"
    venv = CACHE / key
    if not (venv / ".ready").exists():
        building = CACHE / f"{key}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True, timeout=120)
        probe = _pip(building, "download", "--no-deps", "-d", str(building / "probe"), SERVERS[0])
        if probe.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            pytest.skip(f"PyPI is unreachable, so the real MCP servers cannot be installed: {probe.stderr[-300:]}")
        installed = _pip(building, "install", *SERVERS)
        assert installed.returncode == 0, installed.stderr[-2000:]
        (building / ".ready").write_text("\n".join(SERVERS))
        shutil.rmtree(venv, ignore_errors=True)
        building.rename(venv)  # the venv's scripts name their interpreter by path: run them through it
    yield venv / "bin"


def _server(bin_dir: Path, script: str, *args: str, **fields: Any) -> dict[str, Any]:
    # Through the venv's interpreter: the cached venv was built under another name, which its script shebangs keep.
    return {"command": str(bin_dir / "python"), "args": [str(bin_dir / script), *args], **fields}


async def _reply(fake_telegram: Any, start: str) -> Any:
    """The message (sent, or a progress note edited into it) whose text starts with `start`."""
    def found() -> list[Any]:
        return [c for c in fake_telegram.calls if c.method in ("sendMessage", "editMessageText")
                and str(c.params.get("text", "")).startswith(start)]

    await eventually(lambda: bool(found()), timeout=15)
    return found()[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one committed file and one new one."""
    path = tmp_path / "repo"
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    for command in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(["git", *command], cwd=path, check=True, env=env)
    (path / "todo.txt").write_text("ship it\n")
    return path


async def test_real_time_and_git_servers_answer_through_the_gate(make_aria: MakeAria, fake_openai: Any,
                                                                 real_servers: Path, repo: Path,
                                                                 tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.toml", {
        "time": _server(real_servers, "mcp-server-time", "--local-timezone", "UTC", timeout=10, risk="auto"),
        "git": _server(real_servers, "mcp-server-git", "--repository", str(repo), timeout=10,
                       keywords=["repository", "repo"]),
    })
    aria = make_aria(mcp_config=config)
    await connected(aria, "time", "git", timeout=30)
    assert aria.skills.tools["time__get_current_time"].risk == "safe"
    assert aria.skills.tools["git__git_add"].risk == "risky"  # not read-only: waits for Approve

    fake_openai.enqueue_tool_call("time__get_current_time", {"timezone": "Europe/Berlin"})
    fake_openai.enqueue_text("It is evening in Berlin.")
    outcome = await aria.agent.run(Request("what time is it in Berlin?"))
    assert (outcome.status, outcome.text) == ("ok", "It is evening in Berlin.")
    (told,) = [m["content"] for m in fake_openai.completions[1].body["messages"] if m["role"] == "tool"]
    assert told.startswith('<tool_output tool="time__get_current_time"') and "Europe/Berlin" in told

    fake_openai.enqueue_tool_call("git__git_status", {"repo_path": str(repo)})
    fake_openai.enqueue_tool_call("git__git_add", {"repo_path": str(repo), "files": ["todo.txt"]})
    fake_openai.enqueue_text("Staged.")
    waiting = await aria.agent.run(Request("show the repo status and stage todo.txt"))
    (status,) = [m["content"] for m in fake_openai.completions[3].body["messages"] if m["role"] == "tool"][-1:]
    assert "todo.txt" in status
    assert waiting.status == "awaiting_approval"
    (approval,) = aria.approvals.pending()
    assert approval.tool == "git__git_add"
    staged = await asyncio.to_thread(subprocess.run, ["git", "diff", "--cached", "--name-only"], cwd=repo,
                                     capture_output=True, text=True)
    assert staged.stdout == ""  # nothing ran before Approve


def test_aria_mcp_list_shows_every_servers_state(real_servers: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.toml", {
        "time": _server(real_servers, "mcp-server-time", timeout=10),
        "broken": fake_server("broken", timeout=5),
    })
    done = aria_cli(["mcp", "list"], {"ARIA_MCP_CONFIG": str(config), "ARIA_DATA_DIR": str(tmp_path / "data")},
                    tmp_path)
    assert done.returncode == 0, done.stderr
    assert "✅ time: up" in done.stdout and "time__get_current_time (safe)" in done.stdout
    assert "⚠ broken: down" in done.stdout and "cannot start: missing credentials" in done.stdout



async def test_through_telegram_a_real_server_answers_and_a_hanging_one_degrades_while_the_bot_keeps_answering(
        make_aria: MakeAria, fake_openai: Any, fake_telegram: Any, real_servers: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.toml", {
        "time": _server(real_servers, "mcp-server-time", "--local-timezone", "UTC", timeout=10),
        "basic": fake_server("basic", timeout=2, env={"MCP_FAKE_NOTES": str(tmp_path / "notes.txt")}),
    })
    aria = make_aria(mcp_config=config, telegram_bot_token=fake_telegram.token,
                     telegram_api_url=fake_telegram.api_url)
    async with polling(aria):
        await connected(aria, "time", "basic", timeout=30)
        fake_openai.enqueue_tool_call("time__get_current_time", {"timezone": "Asia/Tokyo"})
        fake_openai.enqueue_text("In Tokyo it is the next morning.")
        fake_telegram.add_message("what time is it in Tokyo?", user_id=OWNER)
        await _reply(fake_telegram, "In Tokyo it is the next morning.")
        told = [m["content"] for m in fake_openai.completions[1].body["messages"] if m["role"] == "tool"]
        assert told[0].startswith('<tool_output tool="time__get_current_time"') and "Asia/Tokyo" in told[0]

        fake_openai.enqueue_tool_call("basic__hang", {})
        fake_openai.enqueue_text("pong")
        fake_openai.enqueue_text("The basic server did not answer.")
        fake_telegram.add_message("call hang", user_id=OWNER)
        await fake_openai.wait_for_requests(3)
        fake_telegram.add_message("ping", user_id=OWNER)
        pong = await _reply(fake_telegram, "pong")
        degraded = await _reply(fake_telegram, "I couldn't reach MCP server basic; here is what I know anyway")
        assert pong.at < degraded.at  # answered while the other request waited on the hung server
        assert "The basic server did not answer." in degraded.params["text"]
