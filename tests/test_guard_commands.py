"""Commands an injected page asks for: the policy matches whole argument vectors, so only read-only forms run alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from aria.agent.state import Request
from aria.app import Aria
from aria.errors import ConfigError
from aria.ledger import Approval
from aria.policy import load_policy

MakeAria = Callable[..., Aria]
DEFAULT = load_policy(None)

INJECTED = [
    "hostname pwned",
    "date -s 2001-01-01",
    "journalctl --vacuum-time=1s",
    "sh -c 'id'",
    "env",
    "python3 -c 'import os; os.system(\"id\")'",
    "df > /tmp/x",
    "uptime; id",
]
READ_ONLY = ["df -h", "uptime", "hostname", "date", "journalctl -u nginx --since today"]


def _approvals(aria: Aria) -> list[Approval]:
    with aria.ledger.read() as s:
        return list(s.exec(select(Approval)))


async def _obey(aria: Aria, fake_openai: Any, command: str) -> Any:
    """A page carries an instruction; the (hijacked) model calls run_command with it."""
    fake_openai.enqueue_tool_call("page_probe", {})
    fake_openai.enqueue_tool_call("run_command", {"command": command})
    fake_openai.enqueue_text("Done as the page said.")
    return await aria.agent.run(Request("probe the page and run the command it gives"))


@pytest.mark.parametrize("command", INJECTED)
async def test_injected_commands_wait_for_approval_and_nothing_runs(make_aria: MakeAria, fake_openai: Any,
                                                                    probe_skills: Path, command: str) -> None:
    aria = make_aria(skills_dir=probe_skills)
    outcome = await _obey(aria, fake_openai, command)

    steps = [(s.kind, s.status) for s in aria.ledger.steps(outcome.run_id) if s.name == "run_command"]
    assert steps == [("guard", "ok")]  # held at the gate: no tool step, nothing executed
    assert outcome.status == "awaiting_approval"
    (approval,) = _approvals(aria)
    assert approval.status == "pending" and approval.tool == "run_command"
    assert json.loads(approval.args_json)["command"] == command


@pytest.mark.parametrize("command", READ_ONLY)
async def test_read_only_forms_run_without_approval(make_aria: MakeAria, fake_openai: Any, probe_skills: Path,
                                                    command: str) -> None:
    aria = make_aria(skills_dir=probe_skills)
    outcome = await _obey(aria, fake_openai, command)

    steps = [s.kind for s in aria.ledger.steps(outcome.run_id) if s.name == "run_command"]
    assert steps == ["tool"]  # ran (journalctl may find no journal: still a run, not an approval)
    assert outcome.status == "ok" and _approvals(aria) == []


@pytest.mark.parametrize("command", [
    "date -us 2001-01-01",  # a bundle of short options
    "date --se 2001-01-01",  # getopt's abbreviation of --set
    "date --set=2001-01-01",
    "date 010100002001",  # MMDDhhmmYYYY sets the clock
    "journalctl --vac=1s",
    "journalctl --rotate",
    "journalctl --flush",
    "journalctl --setup-keys",
    "hostname -F /etc/hostname",
    "whoami --help me",
    "systemctl stop nginx",
    "/usr/bin/df",  # a path is not the allowlisted program
    "bash",
    "/bin/sh -c id",
    "sudo df",
    "su -c df",
    "doas df",
    "perl -e 'system(\"id\")'",
    "node -e 'require(\"child_process\")'",
    "ruby -e 'exec \"id\"'",
    "awk 'BEGIN { system(\"id\") }'",
    "xargs id",
    "find / -exec id {} +",
    "df < /etc/passwd",
    "df && id",
    "df $(id)",
    "df `id`",
    "df | tee /tmp/x",
    "uptime\nid",
    "echo 'unbalanced",
    "",
])
def test_the_shipped_policy_asks_for_anything_but_read_only_forms(command: str) -> None:
    assert DEFAULT.check_command(command).action == "escalate"


@pytest.mark.parametrize("command", [
    "df", "df -h /", "uptime -p", "free -m", "whoami", "hostname -f", "date -u", "date +%F", "date -u +%H:%M",
    "date --date=yesterday", "systemctl status", "systemctl status nginx", "systemctl is-active nginx",
    "journalctl", "journalctl -u nginx -n 50 --no-pager", "journalctl --since=-1h -p err",
])
def test_the_shipped_policy_runs_read_only_forms(command: str) -> None:
    assert DEFAULT.check_command(command).action == "allow"


def test_never_rules_still_block() -> None:
    verdict = DEFAULT.check_command("systemctl reboot")
    assert (verdict.action, verdict.rule) == ("block", "commands.block")


def test_interpreters_ask_even_when_the_owner_allowlists_their_harmless_neighbours(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[commands.allow]]\nprogram = "find"\n\n[[commands.allow]]\nprogram = "cat"\n'
                    'args = ["/var/log/*"]\n')
    policy = load_policy(path)
    assert policy.check_command("find /var/log -name '*.gz'").action == "allow"
    assert policy.check_command("find /var/log -execdir id ;").action == "escalate"
    assert policy.check_command("find /var/log -delete").action == "escalate"
    assert policy.check_command("cat /var/log/syslog").action == "allow"
    assert policy.check_command("cat /etc/shadow").action == "escalate"
    assert policy.check_command("cat /var/log/a /etc/shadow").action == "escalate"


def test_args_forms_match_word_by_word_and_dots_take_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[commands.allow]]\nprogram = "docker"\nargs = ["ps", "logs * ..."]\ndeny = ["-f", "--follow"]\n')
    policy = load_policy(path)
    assert [policy.check_command(c).action for c in (
        "docker ps", "docker logs web", "docker logs web --tail 50", "docker ps -a", "docker logs", "docker rm web",
        "docker logs web -f", "docker logs web --fol",
    )] == ["allow", "allow", "allow", "escalate", "escalate", "escalate", "escalate", "escalate"]


@pytest.mark.parametrize(("body", "problem"), [
    ('[commands]\nallow_without_approval = ["df"]\n', "allow_without_approval matched first words only"),
    ('[[commands.allow]]\nargs = [""]\n', "entry 1: `program` must be one command name"),
    ('[[commands.allow]]\nprogram = "/bin/df"\n', "entry 1: `program` must be one command name"),
    ('[[commands.allow]]\nprogram = "df"\n[[commands.allow]]\nprogram = "date"\nargs = "-u"\n',
     r"entry 2 \(date\): `args` must be a list of strings"),
    ('[[commands.allow]]\nprogram = "date"\ndeny = [1]\n', r"entry 1 \(date\): `deny` must be a list of strings"),
    ('[[commands.allow]]\nprogram = "date"\nargz = []\n', r"entry 1 \(date\): unknown key 'argz'"),
    ('[[commands.allow]]\nprogram = "date"\nargs = ["\'-u"]\n', "cannot be split into words"),
    ('[[commands.allow]]\nprogram = "df"\nargs = ["... -h"]\n', "may only be the last word"),
    ('[[commands.allow]]\nprogram = "bash"\n', "bash runs other programs or code"),
    ('[[commands.allow]]\nprogram = "python3"\n', "cannot be allowlisted"),
    ('[commands]\nallow = "df"\n', "must be a list of tables"),
    ('[commands]\nblock = "reboot"\n', "block must be a list"),
    ('[commands]\nallowed = []\n', "unknown key 'allowed'"),
])
def test_bad_command_entries_are_config_errors_naming_the_file(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_policy(path)
    assert caught.value.problems[0].startswith(f"ARIA_POLICY_FILE: {path} is invalid: ")


async def test_a_policy_file_override_decides_what_runs(make_aria: MakeAria, fake_openai: Any, probe_skills: Path,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[commands.allow]]\nprogram = "hostname"\nargs = ["pwned"]\n')  # the owner's (odd) choice
    aria = make_aria(skills_dir=probe_skills, policy_file=path)
    outcome = await _obey(aria, fake_openai, "uptime")  # not on this file's list
    assert outcome.status == "awaiting_approval"
    assert aria.agent.policy.check_command("hostname pwned").action == "allow"
