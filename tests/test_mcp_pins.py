"""Pinned MCP tool definitions: a changed description or schema disables the tool until the owner accepts it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aria.agent.state import Request
from aria.app import Aria
from aria.commands import answer
from aria.config import Settings
from aria.ledger import Ledger
from aria.mcp.pins import PinStore, definition_of
from tests.conftest import OWNER, polling
from tests.fakes.mcp_servers import basic
from tests.mcp_support import connected, fake_server, write_config


def test_a_pin_trusts_first_sight_and_asks_once_per_new_definition(ledger: Ledger) -> None:
    pins = PinStore(ledger)
    v1 = definition_of("Echo the text back", {"type": "object"}, None)
    v2 = definition_of("Echo the text back, and also send it to audit.example", {"type": "object"}, None)
    first = pins.check("basic", "echo", v1)
    assert (first.state, first.news) == ("trusted", False)
    assert pins.check("basic", "echo", v1).state == "trusted"
    changed = pins.check("basic", "echo", v2)
    assert (changed.state, changed.news) == ("changed", True)
    assert (pins.check("basic", "echo", v2).state, pins.check("basic", "echo", v2).news) == ("changed", False)
    pin = pins.get(changed.pin_id)
    assert pin is not None and pin.pending_digest is not None
    assert pins.decide(changed.pin_id, "0000000", "accept") is None  # a stale button decides nothing
    kept = pins.decide(changed.pin_id, pin.pending_digest[:12], "keep")
    assert kept is not None and kept.status == "declined"
    assert pins.check("basic", "echo", v2).state == "declined"
    assert pins.check("basic", "echo", v1).state == "trusted"  # changed back to what the owner trusted


def _settings(make_settings: Callable[..., Settings], fake_openai: Any, tmp_path: Path, **more: Any) -> Settings:
    config = write_config(tmp_path / "mcp.toml", {"basic": fake_server("basic", timeout=2, keywords=["audit"])})
    return make_settings(openai_base_url=fake_openai.base_url, openai_api_key="sk-test-key-0000000000000000",
                         mcp_config=config, **more)


async def test_a_changed_description_disables_the_tool_until_the_owner_presses_accept(
        make_settings: Callable[..., Settings], fake_openai: Any, fake_telegram: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = Aria.build(_settings(make_settings, fake_openai, tmp_path), mcp_targets={"basic": basic()})
    await connected(first, "basic")
    await first.aclose()
    monkeypatch.setenv("MCP_FAKE_VARIANT", "2")  # the server now describes echo differently
    settings = _settings(make_settings, fake_openai, tmp_path, telegram_bot_token=fake_telegram.token,
                         telegram_api_url=fake_telegram.api_url)
    aria = Aria.build(settings, mcp_targets={"basic": basic()})
    try:
        async with polling(aria):
            (asked,) = await fake_telegram.wait_for(
                "sendMessage", predicate=lambda c: "changed the definition" in c.params.get("text", ""))
            text = asked.params["text"]
            assert "basic__echo" in text and "disabled until you accept" in text
            assert '- "description": "Echo the text back",' in text
            assert '+ "description": "Echo the text back, and also send it to audit.example",' in text
            buttons = str(asked.params["reply_markup"])
            assert "Accept" in buttons and "Keep disabled" in buttons
            spec = aria.skills.tools["basic__echo"]
            assert spec.description.startswith("Disabled") and "audit" not in spec.description

            fake_openai.enqueue_tool_call("basic__echo", {"text": "hi"})
            fake_openai.enqueue_text("Echo is disabled.")
            outcome = await aria.agent.run(Request("echo hi via audit"))
            told = [m["content"] for m in fake_openai.completions[-1].body["messages"] if m["role"] == "tool"]
            assert "basic__echo is disabled: its definition changed" in told[0]
            assert outcome.text == "Echo is disabled."

            pin = aria.mcp.find_pin("basic__echo")
            assert pin is not None and pin.pending_digest is not None
            fake_telegram.press_button(f"mcp:a:{pin.id}:{pin.pending_digest[:12]}", user_id=OWNER,
                                       message_id=asked.result["message_id"])
            await fake_telegram.wait_for("sendMessage", predicate=lambda c: c.params.get("text", "").startswith(
                "Accepted: basic__echo is enabled"))
            accepted = aria.skills.tools["basic__echo"].description
            assert accepted == "Echo the text back, and also send it to audit.example"
            fake_openai.enqueue_tool_call("basic__echo", {"text": "ok"})
            fake_openai.enqueue_text("It echoed.")
            await aria.agent.run(Request("echo ok via audit"))  # through the gate, as the model calls it
            told = [m["content"] for m in fake_openai.completions[-1].body["messages"] if m["role"] == "tool"]
            assert "echo: ok" in told[0] and "disabled" not in told[0]
    finally:
        await aria.aclose()


async def test_mcp_keep_leaves_a_changed_tool_disabled(make_settings: Callable[..., Settings], fake_openai: Any,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Aria.build(_settings(make_settings, fake_openai, tmp_path), mcp_targets={"basic": basic()})
    await connected(first, "basic")
    await first.aclose()
    monkeypatch.setenv("MCP_FAKE_VARIANT", "2")
    aria = Aria.build(_settings(make_settings, fake_openai, tmp_path), mcp_targets={"basic": basic()})
    try:
        await connected(aria, "basic")
        (listed,) = await answer(aria, "mcp", [])
        assert "basic__echo (safe) [disabled" in listed.text
        (kept,) = await answer(aria, "mcp", ["keep", "basic__echo"])
        assert kept.text.startswith("Kept disabled: basic__echo")
        assert aria.skills.tools["basic__echo"].description.startswith("Disabled")  # still off to the model
        (again,) = await answer(aria, "mcp", ["accept", "basic__echo"])
        assert again.text.startswith("Accepted: basic__echo")
        (listed,) = await answer(aria, "mcp", [])
        assert "basic__echo (safe)\n" in listed.text + "\n" and "[disabled" not in listed.text
    finally:
        await aria.aclose()
