"""Which commands `run_command` may run without approval: whole argument vectors, never first words.

A command is split into words with shlex, exactly as `run_command` splits it (no shell ever runs it). Then:

1. text with shell syntax (`|`, `;`, `&`, `<`, `>`, `$`, backticks, a newline) asks: it only means something to a
   shell, and a command that contains it was written for one;
2. a program that runs other programs or code (a shell, `env`, `sudo`, `su`, `doas`, an interpreter, `awk`, `xargs`,
   …) asks, and so does an argument that makes a program run one (`find -exec`, …), whatever the allowlist says;
3. an allowlist entry for the program whose argument rules the words satisfy lets it run without approval;
4. anything else asks.

An allowlist entry in the policy file (`[[commands.allow]]`):

    program = "journalctl"          # the first word exactly: no path, no pattern
    args = ["", "-u *", "-u * ..."] # optional: the argument forms allowed (one must match)
    deny = ["--vacuum-*", "--rotate"]  # optional: arguments that make it ask

`args`: each form is shell words matched one to one against the arguments with fnmatch (`*` stands for any one word,
or any part of one); a last word `...` matches any further words; `""` means no arguments at all. Without `args`,
any arguments match. `deny`: fnmatch patterns checked against every argument, and also against each letter of a
bundle of short options (`-us` is `-u -s`), the name of `--name=value`, and what a long option abbreviates (getopt
accepts `--se` for `--set`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_SHELL_SYNTAX = re.compile(r"[|;&<>`$\n\r]")
_GLOB = re.compile(r"[*?\[]")
ANY_FURTHER = "..."

# Programs that run other programs or code: what they do depends on text no rule here reads.
RUNS_OTHER_CODE = (
    "sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox", "toybox",
    "env", "sudo", "su", "doas", "pkexec", "runuser", "setpriv", "chroot", "nsenter", "unshare", "systemd-run",
    "nohup", "nice", "ionice", "timeout", "stdbuf", "setsid", "time", "watch", "flock", "script", "expect",
    "strace", "ltrace", "gdb", "ssh", "xargs", "parallel", "exec", "eval", "command", "builtin", "source", ".",
    "python*", "pypy*", "perl*", "ruby*", "irb", "node", "nodejs", "deno", "bun", "php*", "lua*", "tclsh*",
    "wish*", "R", "Rscript", "julia", "pwsh", "awk", "gawk", "mawk", "nawk", "sed", "make",
)
# Arguments that make an otherwise harmless program run a command (or write where it should only read).
RUNS_CODE_ARGS: dict[str, tuple[str, ...]] = {
    "find": ("-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint*", "-fls"),
    "rg": ("--pre", "--pre=*"),
    "tar": ("--to-command*", "--checkpoint-action*", "--use-compress-program*", "-I"),
    "git": ("-c", "--exec-path*", "--config-env*"),
}


@dataclass(frozen=True)
class CommandCheck:
    """The outcome for one command: `allow` (runs now) or `ask` (waits for the owner), and why."""

    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class CommandRule:
    """One allowlist entry: a program and the argument forms of it that only read."""

    program: str
    args: tuple[tuple[str, ...], ...] | None = None  # None: any arguments
    deny: tuple[str, ...] = ()

    def permits(self, arguments: list[str]) -> bool:
        """True when the arguments take an allowed form and none is denied."""
        if self.args is not None and not any(_form_matches(form, arguments) for form in self.args):
            return False
        return denied(arguments, self.deny) is None


def check(command: str, rules: tuple[CommandRule, ...]) -> CommandCheck:
    """Whether `command` may run without approval under `rules` (see the module docstring for the order)."""
    if _SHELL_SYNTAX.search(command):
        return CommandCheck(False, "shell operators and redirections always need approval")
    try:
        words = shlex.split(command)
    except ValueError:
        return CommandCheck(False, "the command could not be parsed")
    if not words:
        return CommandCheck(False, "the command is empty")
    program, arguments = words[0], words[1:]
    name = os.path.basename(program)
    if runs_other_code(name):
        return CommandCheck(False, f"{name} runs other programs or code: it always needs approval")
    risky = denied(arguments, RUNS_CODE_ARGS.get(name, ()))
    if risky is not None:
        return CommandCheck(False, f"{name} {risky} runs or changes things: it always needs approval")
    entries = [rule for rule in rules if rule.program == program]
    if any(rule.permits(arguments) for rule in entries):
        return CommandCheck(True)
    if entries:
        return CommandCheck(False, f"these arguments are not a read-only form of {program} the policy lists")
    return CommandCheck(False, f"{program} is not on the policy's list of read-only commands")


def runs_other_code(program: str) -> bool:
    """True for a shell, a privilege switch, an interpreter or another program that runs what it is given."""
    return any(fnmatch.fnmatchcase(program, pattern) for pattern in RUNS_OTHER_CODE)


def denied(arguments: list[str], patterns: tuple[str, ...]) -> str | None:
    """The first argument (as the program may read it) that a pattern forbids, or None."""
    for word in arguments:
        for spelling in _spellings(word):
            if any(fnmatch.fnmatchcase(spelling, p) or _abbreviates(spelling, p) for p in patterns):
                return word
    return None


def _spellings(word: str) -> Iterator[str]:
    """The word, plus what getopt reads in it: `--name` of `--name=value`, each option of a `-abc` bundle."""
    yield word
    if word.startswith("--"):
        name = word.split("=", 1)[0]
        if name != word:
            yield name
    elif word.startswith("-") and len(word) > 2:
        yield from (f"-{letter}" for letter in word[1:])


def _abbreviates(word: str, pattern: str) -> bool:
    """True when `word` is a long option that getopt could expand to what `pattern` names."""
    if not (word.startswith("--") and len(word) > 2 and pattern.startswith("--")):
        return False
    literal = _GLOB.split(pattern, 1)[0]
    return literal.startswith(word.split("=", 1)[0])


def _form_matches(form: tuple[str, ...], arguments: list[str]) -> bool:
    if form and form[-1] == ANY_FURTHER:
        head = form[:-1]
        return len(arguments) >= len(head) and all(map(fnmatch.fnmatchcase, arguments, head))
    return len(arguments) == len(form) and all(map(fnmatch.fnmatchcase, arguments, form))


def parse_rules(entries: Any) -> tuple[CommandRule, ...]:
    """`[[commands.allow]]` entries as rules; ValueError names the entry and what is wrong with it."""
    if not isinstance(entries, list):
        raise ValueError("[[commands.allow]] must be a list of tables, each with a `program`")
    return tuple(_parse_rule(number, entry) for number, entry in enumerate(entries, start=1))


def _parse_rule(number: int, entry: Any) -> CommandRule:
    label = f"[[commands.allow]] entry {number}"
    if not isinstance(entry, dict):
        raise ValueError(f"{label} must be a table with `program` (and optional `args`, `deny`)")
    program = entry.get("program")
    if not isinstance(program, str) or not program or any(c.isspace() or c == "/" for c in program) \
            or _GLOB.search(program):
        raise ValueError(f"{label}: `program` must be one command name (no path, spaces or patterns)")
    label = f"{label} ({program})"
    unknown = sorted(set(entry) - {"program", "args", "deny"})
    if unknown:
        raise ValueError(f"{label}: unknown key {unknown[0]!r} (use `program`, `args` and `deny`)")
    if runs_other_code(program):
        raise ValueError(f"{label}: {program} runs other programs or code, so it always needs approval and "
                         "cannot be allowlisted")
    args = entry.get("args")
    forms: tuple[tuple[str, ...], ...] | None = None
    if args is not None:
        forms = tuple(_parse_form(label, form) for form in _strings(label, "args", args))
    deny = tuple(_strings(label, "deny", entry.get("deny", [])))
    return CommandRule(program, forms, deny)


def _strings(label: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{label}: `{key}` must be a list of strings")
    return value


def _parse_form(label: str, form: str) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(form))
    except ValueError as exc:
        raise ValueError(f"{label}: the args form {form!r} cannot be split into words ({exc})") from None
    if ANY_FURTHER in words[:-1]:
        raise ValueError(f"{label}: in the args form {form!r}, `...` may only be the last word")
    return words
