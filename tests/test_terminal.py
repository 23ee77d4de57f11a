"""The terminal channel drives the same agent loop: answers, data commands, and approvals by command."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aria.app import Aria
from aria.terminal import chat
from tests.conftest import marks

MakeAria = Callable[..., Aria]


async def test_chat_answers_and_data_commands_work(make_aria: MakeAria, fake_openai: Any) -> None:
    fake_openai.enqueue_text("Load is low.")
    out = io.StringIO()
    await chat(make_aria(), io.StringIO("how is the load?\n/status\n/quit\nignored\n"), out)
    text = out.getvalue()
    assert "aria> Load is low." in text and "Spend today:" in text and "ignored" not in text


async def test_data_commands_work_without_a_model(make_settings: Callable[..., Any]) -> None:
    aria = Aria.build(make_settings())
    out = io.StringIO()
    try:
        await chat(aria, io.StringIO("/skills\nhello\n"), out)
    finally:
        await aria.aclose()
    assert "run_command (risky, ask)" in out.getvalue()
    assert "I don't know: no model configured" in out.getvalue()


async def test_approvals_are_decided_by_command(make_aria: MakeAria, fake_openai: Any, probe_skills: Path) -> None:
    aria = make_aria(skills_dir=probe_skills)
    fake_openai.enqueue_tool_call("write_mark", {"label": "terminal"})
    fake_openai.enqueue_text("PASS")  # the editor's review of the draft
    fake_openai.enqueue_text("Marked.")
    out = io.StringIO()
    await chat(aria, io.StringIO("probe and mark\n/approve 1\n/approve 1\n"), out)
    text = out.getvalue()
    assert "(/approve 1 or /reject 1)" in text and "aria> Marked." in text
    assert "Already decided; nothing more was done." in text
    assert marks(aria.settings.data_dir) == ["terminal"]


def test_aria_chat_answers_commands_and_exits_cleanly(tmp_path: Path) -> None:
    from tests.conftest import aria_cli

    result = aria_cli(["chat"], {"ARIA_DATA_DIR": str(tmp_path / "data")}, tmp_path,
                      stdin="/status\n/pause\n/resume\n/approvals\n")
    assert result.returncode == 0, result.stderr
    assert "Spend today" in result.stdout and "No approvals are waiting." in result.stdout
    assert "Traceback" not in result.stderr  # start and stop are clean (the scheduler is stopped once)
