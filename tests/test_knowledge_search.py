"""Retrieval: synonyms and stems find paraphrases, names nobody wrote down are declined, a superseded fact never
outranks its replacement, any text is a safe query; and `aria knowledge` from the shell."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from aria.cli import app
from aria.clock import ManualClock
from aria.knowledge import Knowledge
from aria.ledger import Ledger
from tests.conftest import aria_cli

DATA = Path(__file__).parent / "data" / "knowledge" / "corpus"
PROXY = """# Reverse proxy

## Restarting nginx
Restart nginx on web1 with `sudo systemctl restart nginx`; check the config first with `nginx -t`.

## Certificates
Certificates are renewed by certbot every night; the timer is certbot.timer.
"""


def knowledge_with(ledger: Ledger, tmp_path: Path, text: str = PROXY) -> Knowledge:
    (tmp_path / "proxy.md").write_text(text)
    knowledge = Knowledge(ledger)
    knowledge.store.add_paths([tmp_path / "proxy.md"])
    return knowledge


def test_a_paraphrase_finds_the_passage_through_synonyms_and_stems(ledger: Ledger, tmp_path: Path) -> None:
    knowledge = knowledge_with(ledger, tmp_path)
    [first, *_] = knowledge.search("how do I reboot nginx?")
    assert "systemctl restart nginx" in first.text and first.title == "Reverse proxy > Restarting nginx"
    assert first.source == str((tmp_path / "proxy.md").resolve()) and first.kind == "runbook"
    assert "certbot" in knowledge.search("when do the certs get renewed")[0].text


def test_a_question_about_something_no_note_mentions_gets_nothing(ledger: Ledger, tmp_path: Path) -> None:
    knowledge = knowledge_with(ledger, tmp_path)
    assert knowledge.search("How do I restart the Jenkins server?") == []
    assert knowledge.search("what is the wifi password at the cottage") == []
    assert knowledge.search("the and of") == []


def test_a_superseded_fact_never_outranks_the_note_that_replaced_it(ledger: Ledger) -> None:
    store = Knowledge(ledger).store
    old = store.remember("The backup server nas1 is at 192.168.10.20; backups of the backup server run at 02:00")
    new = store.remember("Backups moved to nas2", supersedes=old.id)  # shares few words with the question
    hits = Knowledge(ledger).search("what is the address of the backup server nas1?")
    ids = [h.id for h in hits]
    assert new.id in ids and old.id in ids and ids.index(new.id) < ids.index(old.id)
    assert hits[ids.index(old.id)].superseded_by == new.id


def test_of_two_statements_of_the_same_fact_the_newer_comes_first(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "aria.db", clock=ManualClock(dt.datetime(2026, 3, 1, tzinfo=dt.UTC)))
    knowledge = knowledge_with(ledger, tmp_path, "# VPN\n\nUpdated: 2024-01-01\n\nThe VPN uses OpenVPN on UDP port "
                               "1194 on the router.\n\n# Changes\n\n## 2025-04-12 VPN\nThe VPN now uses WireGuard on "
                               "UDP port 51820 on the router.\n")
    hits = knowledge.search("which UDP port does the VPN use?")
    assert "51820" in hits[0].text and "1194" in hits[1].text


def test_a_question_asking_for_the_latest_prefers_recent_notes(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "aria.db", clock=ManualClock(dt.datetime(2026, 3, 1, tzinfo=dt.UTC)))
    store = Knowledge(ledger).store
    store.remember("Incident: the shop was down because the disk was full", dated=dt.datetime(2024, 5, 1,
                                                                                              tzinfo=dt.UTC))
    recent = store.remember("Incident: the shop was down after a bad deploy",
                            dated=dt.datetime(2026, 2, 20, tzinfo=dt.UTC))
    assert Knowledge(ledger).search("what was the last shop incident")[0].id == recent.id


@pytest.fixture(scope="module")
def odd_notes(tmp_path_factory: pytest.TempPathFactory) -> Knowledge:
    """Notes holding FTS5's own syntax, shared by the examples of one property test."""
    knowledge = Knowledge(Ledger.open(tmp_path_factory.mktemp("knowledge") / "aria.db"))
    knowledge.store.add_text("/srv/proxy.md", PROXY + '\n"quoted" NEAR(a b) * - ^ : OR AND NOT\n', "proxy")
    return knowledge


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_safe_query(odd_notes: Knowledge, query: str) -> None:
    results = odd_notes.search(query)
    assert all(h.score > 0 for h in results)


def test_the_cli_adds_searches_lists_and_forgets(tmp_path: Path) -> None:
    env = {"ARIA_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()

    def aria(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    added = aria("knowledge", "add", str(DATA / "nas.md"), str(DATA / "network.md"))
    assert added.exit_code == 0, added.output
    assert added.stdout.count("added") == 2
    assert aria("knowledge", "add", str(DATA / "nas.md")).stdout.startswith("unchanged")

    # The installed command, as a labelled corpus is checked: a JSON array, best first.
    found = aria_cli(["knowledge", "search", "how do I restart the NAS safely?", "--json", "--k", "3"], env, tmp_path)
    results = json.loads(found.stdout)
    assert 1 <= len(results) <= 3 and {"id", "source", "score", "text"} <= set(results[0])
    assert "Restart procedure" in results[0]["title"] and results[0]["source"].endswith("nas.md")
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert json.loads(aria("knowledge", "search", "What is the Jenkins admin password?", "--json").stdout) == []

    assert aria("knowledge", "list", "--limit", "2").stdout.strip().endswith("notes, 2 files.")
    assert aria("knowledge", "forget", str(results[0]["id"])).stdout.strip() == f"Forgot note {results[0]['id']}."
    missing = aria("knowledge", "forget", str(results[0]["id"]))
    assert missing.exit_code == 1 and "no note" in missing.output
    refused = aria("knowledge", "add", str(tmp_path / "nothing.md"))
    assert refused.exit_code == 1 and "refused" in refused.stdout
