"""The DO-NOT policy: deterministic rules on tool arguments and outbound drafts, read from a TOML file.

A rule either blocks (never, whatever the model or anyone says) or escalates (only after an owner's Approve).
Rules are also summarised for the system prompt, but the check here is what holds: the model cannot talk its way
past a regular expression.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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
    commands_allowed: tuple[str, ...] = ()
    commands_blocked: tuple[str, ...] = ()
    amounts: tuple[AmountRule, ...] = ()

    def check_text(self, text: str) -> Verdict:
        """A draft meant for someone other than the owner."""
        for rule in self.text:
            if rule.pattern.search(text):
                return Verdict(rule.action, rule.name, rule.say)
        return ALLOW

    def check_recipient(self, recipient: str) -> Verdict:
        """Outbound messages go only to allowlisted recipients."""
        if any(fnmatch.fnmatchcase(recipient.lower(), p.lower()) for p in self.recipients):
            return ALLOW
        return Verdict("block", "recipients", f"{recipient} is not on the recipient allowlist")

    def check_command(self, command: str) -> Verdict:
        """run_command: blocked, allowed without approval (read-only allowlist), or escalated."""
        normalised = " ".join(command.split())
        for pattern in self.commands_blocked:
            if pattern in normalised:
                return Verdict("block", "commands.block", f"commands containing {pattern!r} never run")
        try:
            words = shlex.split(command)
        except ValueError:
            return Verdict("escalate", "commands", "the command could not be parsed")
        if _SHELL_META.search(command):
            return Verdict("escalate", "commands", "shell operators always need approval")
        for allowed in self.commands_allowed:
            prefix = allowed.split()
            if words[: len(prefix)] == prefix:
                return ALLOW
        return Verdict("escalate", "commands", "commands outside the allowlist need approval")

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


_SHELL_META = re.compile(r"[|;&<>`$]")


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
    commands = data.get("commands", {})
    return Policy(
        text=text,
        recipients=tuple(data.get("recipients", {}).get("allow", [])),
        commands_allowed=tuple(commands.get("allow_without_approval", [])),
        commands_blocked=tuple(commands.get("block", [])),
        amounts=amounts,
    )
