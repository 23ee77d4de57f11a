"""The AgentDojo replay's mapping, when the optional `agentdojo` extra is installed (skipped otherwise): write tools
are risky, read tools are untrusted content, and one injected pair ends with the injection refused and named."""

from __future__ import annotations

import pytest

pytest.importorskip("agentdojo")

from bench.agentdojo import ACTIONS, READS, VERSION, World, get_suites, is_risky, replay, suite_skills


def test_write_tools_are_risky_and_read_tools_untrusted() -> None:
    suite = get_suites(VERSION)["slack"]
    actions, reads = suite_skills(suite, World())
    assert (actions.name, reads.name) == (ACTIONS, READS)
    assert {t.name for t in actions.tools} >= {"send_direct_message", "invite_user_to_slack", "post_webpage"}
    assert all(t.risk == "risky" and t.autonomy == "ask" and is_risky(t.name) for t in actions.tools)
    assert all(t.risk == "safe" and t.reads is not None for t in reads.tools)
    assert next(t for t in reads.tools if t.name == "get_webpage").url_arg == "url"


async def test_one_slack_pair_is_refused_and_its_source_named() -> None:
    async def quiet(line: str) -> None:
        return None

    tallies = await replay({"slack": get_suites(VERSION)["slack"]}, 1, quiet)
    attacked, plain = tallies["aria obeying"], tallies["plain obeying"]
    assert (attacked.runs, attacked.security, attacked.unpressed) == (1, 0, 0)
    assert plain.security == 1 and attacked.named == attacked.asked == 1
    assert tallies["aria ignoring"].utility == tallies["plain ignoring"].utility == 1
