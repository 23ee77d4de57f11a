"""The DO-NOT policy: deterministic rules on tool arguments and outbound drafts, read from a TOML file.

A rule either blocks (never, whatever the model or anyone says) or escalates (only after an owner's Approve).
Rules are also summarised for the system prompt, but the check here is what holds: the model cannot talk its way
past a regular expression.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from aria.command_policy import CommandRule, check, parse_rules
from aria.errors import ConfigError

Action = Literal["allow", "escalate", "block"]
DEFAULT_POLICY = "policy.toml"


@dataclass(frozen=True)
class Verdict:
    """What the policy says about one action or draft, and which rule said it."""

    action: Action
    rule: str = ""
    reason: str = ""


ALLOW = Verdict("allow")


@dataclass(frozen=True)
class TextRule:
    """A phrase outbound text must not contain."""

    name: str
    say: str
    pattern: re.Pattern[str]
    action: Action


@dataclass(frozen=True)
class AmountRule:
    """An upper limit on a numeric tool argument."""

    name: str
    argument: str
    max: float
    action: Action


@dataclass(frozen=True)
class Policy:
    """The loaded rules."""

    text: tuple[TextRule, ...] = ()
    recipients: tuple[str, ...] = ()
    commands_allowed: tuple[CommandRule, ...] = ()
    commands_blocked: tuple[str, ...] = ()
    amounts: tuple[AmountRule, ...] = ()

    def check_text(self, text: str) -> Verdict:
        """A draft meant for someone other than the owner."""
        for rule in self.text:
            if rule.pattern.search(text):
                return Verdict(rule.action, rule.name, rule.say)
        return ALLOW

    def check_recipient(self, recipient: str) -> Verdict:
        """Outbound messages go to allowlisted recipients; others are blocked. With no allowlist at all, every
        recipient asks the owner (an empty list means "ask", not "block")."""
        if not self.recipients:
            return Verdict("escalate", "recipients", f"no recipient allowlist is set, so sending to {recipient} "
                           "needs your approval")
        if any(fnmatch.fnmatchcase(recipient.lower(), p.lower()) for p in self.recipients):
            return ALLOW
        return Verdict("block", "recipients", f"{recipient} is not on the recipient allowlist")

    def check_command(self, command: str) -> Verdict:
        """run_command: blocked (a `block` entry), allowed without approval (a read-only form on the allowlist,
        see aria.command_policy), or escalated."""
        normalised = " ".join(command.split())
        for pattern in self.commands_blocked:
            if pattern in normalised:
                return Verdict("block", "commands.block", f"commands containing {pattern!r} never run")
        outcome = check(command, self.commands_allowed)
        return ALLOW if outcome.allowed else Verdict("escalate", "commands", outcome.reason)

    def check_amounts(self, arguments: dict[str, Any]) -> Verdict:
        """Numeric arguments above their limits."""
        for rule in self.amounts:
            value = arguments.get(rule.argument)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > rule.max:
                return Verdict(rule.action, rule.name, f"{rule.argument} {value} is above the limit of {rule.max:g}")
        return ALLOW

    def prompt_lines(self) -> list[str]:
        """The rules as short DO-NOT lines for the system prompt."""
        return [f"Policy: {rule.say}." for rule in self.text]


def load_policy(path: Path | None) -> Policy:
    """The owner's policy file, or the commented default shipped with Aria."""
    if path is None:
        raw = resources.files("aria").joinpath("defaults", DEFAULT_POLICY).read_text(encoding="utf-8")
        where = "the default policy"
    else:
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"ARIA_POLICY_FILE: cannot read {path}: {exc.strerror}"]) from None
        where = str(path)
    try:
        return _parse(tomllib.loads(raw))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, re.error) as exc:
        raise ConfigError([f"ARIA_POLICY_FILE: {where} is invalid: {exc}"]) from None


def _action(value: str) -> Action:
    if value not in ("block", "escalate"):
        raise ValueError(f"action must be 'block' or 'escalate', not {value!r}")
    return value  # type: ignore[return-value]


def _parse(data: dict[str, Any]) -> Policy:
    text = tuple(TextRule(r["name"], r["say"], re.compile(r["pattern"]), _action(r.get("action", "block")))
                 for r in data.get("text", []))
    amounts = tuple(AmountRule(r["name"], r["argument"], float(r["max"]), _action(r.get("action", "escalate")))
                    for r in data.get("amounts", []))
    commands = _commands(data)
    return Policy(
        text=text,
        recipients=tuple(data.get("recipients", {}).get("allow", [])),
        commands_allowed=parse_rules(commands.get("allow", [])),
        commands_blocked=tuple(commands.get("block", [])),
        amounts=amounts,
    )


def _commands(data: dict[str, Any]) -> dict[str, Any]:
    commands = data.get("commands", {})
    if not isinstance(commands, dict):
        raise ValueError("[commands] must be a table")
    if "allow_without_approval" in commands:
        raise ValueError("[commands] allow_without_approval matched first words only and is no longer read: list "
                         "each read-only command as a [[commands.allow]] table with `program` and its allowed "
                         "`args` forms or `deny` flags (see aria/defaults/policy.toml)")
    unknown = sorted(set(commands) - {"allow", "block"})
    if unknown:
        raise ValueError(f"[commands]: unknown key {unknown[0]!r} (use `allow` and `block`)")
    block = commands.get("block", [])
    if not isinstance(block, list) or not all(isinstance(item, str) and item.strip() for item in block):
        raise ValueError("[commands] block must be a list of non-empty strings")
    return commands
