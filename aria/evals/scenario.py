"""The scenario format of `aria eval`: TOML files holding `[[scenario]]` tables (evals/README.md documents it).

A file is read whole and checked before anything runs: a bad file is one `ScenarioError` naming the file, the
scenario and the field, with what is wrong, and no scenario of it runs. Placeholders in any string (`{pages}`,
`{closed}`, `{secret}`) are filled in when the scenario runs, once its servers have addresses.
"""

from __future__ import annotations

import difflib
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    """Unknown keys are mistakes (a typo in an expectation must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(Strict):
    """A page served at `{pages}<path>` by the scenario's local web server."""

    path: str = Field(pattern=r"^/")
    body: str = ""
    content_type: str = "text/html; charset=utf-8"
    status: int = Field(default=200, ge=100, le=599)
    delay: float = Field(default=0.0, ge=0, le=30)  # seconds before the answer: a slow connector
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. a redirect's location
    repeat: int = Field(default=1, ge=1, le=10_000_000)  # the body, this many times over: a huge page


class File(Strict):
    """A document the owner sends in a `document` step (by its name), as Telegram would send it."""

    name: str = Field(min_length=1, max_length=200)
    text: str
    repeat: int = Field(default=1, ge=1, le=10_000_000)  # the text, this many times over: a huge document


class McpTool(Strict):
    """One tool of an MCP server the scenario declares: served by a real MCP server process over stdio
    (aria/evals/mcp_server.py), configured for the scenario's Aria through ARIA_MCP_CONFIG. Aria names it
    `<server>__<tool>`."""

    server: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,23}$")
    tool: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""  # what the server says the tool does (hostile text welcome)
    changed_description: str | None = None  # listed instead from the server's second start on (after a restart)
    read_only: bool = True  # annotated read-only (a safe tool); false: it writes (risky, asks the owner)
    input_schema: dict[str, Any] = Field(default_factory=dict)  # its JSON schema (default: an object, anything)
    output: str = ""
    repeat: int = Field(default=1, ge=1, le=10_000_000)  # the output, this many times over
    error: str | None = None  # the tool answers with isError and this text instead
    hang: float | None = Field(default=None, gt=0, le=120)  # seconds before it answers
    crash: bool = False  # the server process dies during the call
    timeout: float | None = Field(default=None, gt=0, le=60)  # the server's per-call timeout (default 10 s)


class Note(Strict):
    """A note in the scenario's knowledge store (the ledger's notes), stored before the first step: it reaches the
    model through the notes a request gets (aria/agent/recall.py) and the `recall` tool."""

    title: str = Field(default="", max_length=200)
    text: str = Field(min_length=1, max_length=4000)  # one note (aria.knowledge.store.MAX_NOTE_CHARS)
    kind: Literal["owner", "runbook", "web", "tool"] = "web"  # who it comes from: only `owner` is trusted
    source: str | None = None  # where it came from (default: by kind, e.g. a page's URL for web)
    replaces: int | None = Field(default=None, ge=1)  # an earlier note of this list (1 = the first) it supersedes


class Fault(Strict):
    """A fault for the whole scenario: a model that always fails, or the pages server not listening."""

    kind: Literal["model_down", "pages_down"]
    model: str | None = None  # model_down: which model (default: every model the settings name)
    status: int = Field(default=503, ge=400, le=599)
    retry_after: float | None = None


class ToolCall(Strict):
    """One tool call in a scripted model turn; `arguments` as a string is sent verbatim (malformed JSON)."""

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class Turn(Strict):
    """One reply of the scripted model: text, tool calls, an HTTP error, a malformed body or a hang."""

    text: str | None = None
    calls: list[ToolCall] = Field(default_factory=list)
    error: int | None = Field(default=None, ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    malformed: bool = False
    hang: float | None = Field(default=None, gt=0, le=120)
    stall: float | None = Field(default=None, gt=0, le=120)  # streamed text falls silent this long ...
    stall_after: int = Field(default=1, ge=0)  # ... after this many pieces (about a word each)
    model: str | None = None  # only a request for this model takes the turn
    usage: dict[str, int] | None = None  # prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens
    times: int = Field(default=1, ge=1, le=500)  # the same turn, queued this many times (runaway loops)

    @model_validator(mode="after")
    def _one_kind(self) -> Turn:
        kinds = [self.error is not None, self.malformed, self.hang is not None, bool(self.calls) or
                 self.text is not None]
        if sum(kinds) != 1:
            raise ValueError("a model turn is exactly one of: text and/or calls, error, malformed, hang")
        if self.stall is not None and (self.text is None or self.calls):
            raise ValueError("stall goes with text (and no calls): the text stops streaming part-way")
        if self.retry_after is not None and self.error is None:
            raise ValueError("retry_after goes with error")
        return self


StepKind = Literal["say", "forward", "document", "event", "press", "retry", "command", "restart"]
ACTIONS: tuple[StepKind, ...] = ("say", "forward", "document", "event", "press", "retry", "command")


class Step(Strict):
    """One thing the owner (or the world) does, in order."""

    say: str | None = None  # the owner writes
    forward: str | None = None  # the owner forwards someone else's message
    sender: str | None = None  # who wrote the forwarded message (default "someone"), or the forwarded document
    document: str | None = None  # the owner sends a document with this file name, as Telegram delivers it
    content: str | None = None  # ... holding this text (default: the [[scenario.files]] entry of that name)
    caption: str = ""  # ... with this caption (the owner's words about it)
    event: str | None = None  # an event from this source, signed with its secret
    payload: dict[str, Any] = Field(default_factory=dict)
    signed: bool = True  # false: a forged event (a wrong signature), which the events path must refuse
    press: Literal["approve", "reject", "details"] | None = None  # a button under an approval request
    approval: int = -1  # which approval of the scenario, in the order they were asked (-1: the latest)
    retry: Literal["strong", "budget", "again"] | None = None  # a retry button under the latest run's message
    command: str | None = None  # an owner command such as "/status"
    restart: bool = False  # stop Aria and start it again on the same data folder
    repeat: int = Field(default=1, ge=1, le=1_000_000)  # the said or forwarded text, this many times over

    @property
    def text(self) -> str:
        """What the owner says or forwards, repeated as asked."""
        return (self.say if self.say is not None else self.forward or "") * self.repeat

    @property
    def kind(self) -> StepKind:
        """Which action this step is."""
        for name in ACTIONS:
            if getattr(self, name) is not None:
                return name
        return "restart"

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [name for name in ACTIONS if getattr(self, name) is not None] + (["restart"] if self.restart else [])
        if len(given) != 1:
            raise ValueError("a step is exactly one of: say, forward, document, event, press, retry, command, "
                             "restart" + (f" (got {', '.join(given)})" if given else ""))
        if (self.content is not None or self.caption) and self.document is None:
            raise ValueError("content and caption go with document")
        if self.sender is not None and self.forward is None and self.document is None:
            raise ValueError("sender goes with forward or document")
        if not self.signed and self.event is None:
            raise ValueError("signed goes with event")
        if self.command is not None and not self.command.startswith("/"):
            raise ValueError("command starts with / (e.g. \"/status\")")
        return self


class LedgerCheck(Strict):
    """Rows of a ledger table matching `where` (column = value): how many there must be."""

    table: Literal["run", "step", "spend", "failure", "approval", "outbox", "event"]
    where: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    contains: dict[str, str] = Field(default_factory=dict)  # column -> text its value contains (any case)
    count: int | None = Field(default=None, ge=0)
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bound(self) -> LedgerCheck:
        if self.count is None and self.min is None and self.max is None:
            raise ValueError("a ledger check needs count, min or max")
        return self


class Expect(Strict):
    """What must be true after the steps. Besides these, every scenario checks the invariants (see checks.py)."""

    messages: list[str] = Field(default_factory=list)  # each is in some message the owner got (any case)
    no_messages: list[str] = Field(default_factory=list)  # none is in any message the owner got
    last_message: list[str] = Field(default_factory=list)  # each is in the last message the owner got
    tools_ran: list[str] = Field(default_factory=list)
    tools_not_run: list[str] = Field(default_factory=list)
    approvals: int | None = Field(default=None, ge=0)  # approval requests asked, exactly
    approval_mentions: list[str] = Field(default_factory=list)  # each is in every approval request
    statuses: list[str] | None = None  # every run's status, in order (not the scheduler's job runs)
    stop_reasons: list[str] | None = None  # every run's stop reason, in order (likewise)
    model_calls_max: int | None = Field(default=None, ge=0)
    spend_max_usd: float | None = Field(default=None, ge=0)
    model_never_saw: list[str] = Field(default_factory=list)  # in no request sent to the model
    model_saw: list[str] = Field(default_factory=list)  # each in some request sent to the model
    ledger: list[LedgerCheck] = Field(default_factory=list)


class Scenario(Strict):
    """One adversarial (or ordinary) situation and what Aria must do in it."""

    name: str = Field(pattern=r"^[\w.-]{1,80}$")
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)  # Aria settings for this scenario (field names)
    policy: str | None = None  # a policy file's TOML, instead of the shipped policy
    event_rules: str | None = None  # an event rules file's TOML (ARIA_EVENT_RULES_FILE)
    pages: list[Page] = Field(default_factory=list)
    files: list[File] = Field(default_factory=list)
    mcp: list[McpTool] = Field(default_factory=list)
    notes: list[Note] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)
    model: list[Turn] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    expect: Expect = Field(default_factory=Expect)
    source: str = ""  # the file it came from (set by the loader)

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from aria.config import Settings

        unknown = sorted(set(value) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)} (use Settings field names, e.g. run_max_usd)")
        reserved = sorted(set(value) & {"data_dir", "database_path", "skills_dir", "owner_ids", "policy_file",
                                         "event_rules_file", "event_secrets", "mcp_config"})
        if reserved:
            raise ValueError(f"setting(s) {', '.join(reserved)} are set by the eval itself")
        return value

    @model_validator(mode="after")
    def _config_files(self) -> Scenario:
        _config_text("policy", self.policy)
        _config_text("event_rules", self.event_rules)
        return self

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        for index, note in enumerate(self.notes, 1):
            if note.replaces is not None and note.replaces >= index:
                raise ValueError(f"notes[{index}].replaces must name an earlier note (1 to {index - 1})")
        names = {file.name for file in self.files}
        for index, step in enumerate(self.steps, 1):
            if step.document is not None and step.content is None and step.document not in names:
                raise ValueError(f"steps[{index}]: document {step.document!r} has no content and no "
                                 "[[scenario.files]] entry of that name")
        tools = [(m.server, m.tool) for m in self.mcp]
        if len(tools) != len(set(tools)):
            raise ValueError("an MCP tool is declared twice (same server and tool)")
        return self

    def document_text(self, step: Step) -> str:
        """What a document step's file holds."""
        if step.content is not None:
            return step.content
        file = next(f for f in self.files if f.name == step.document)
        return file.text * file.repeat


def _config_text(kind: str, text: str | None) -> None:
    """A policy or event rules file's TOML, checked by the loader Aria uses (a bad one is the file's error)."""
    if text is None:
        return
    from aria.errors import ConfigError
    from aria.event_rules import load_rules
    from aria.policy import load_policy

    with tempfile.TemporaryDirectory(prefix="aria-eval-check-") as folder:
        path = Path(folder) / f"{kind}.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_policy(path) if kind == "policy" else load_rules(path)
        except ConfigError as exc:
            detail = "; ".join(exc.problems).replace(str(path), "it")
            raise ValueError(f"not a valid {kind.replace('_', ' ')} file: {detail}") from None


class ScenarioError(Exception):
    """A scenario file that cannot be run: its problems, each naming the file and where."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_file(path: Path) -> list[Scenario]:
    """Every scenario in one TOML file, checked; ScenarioError lists what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ScenarioError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"{path}: not valid TOML: {exc}"]) from None
    extra = sorted(set(data) - {"scenario"})
    problems = [f"{path}: unknown top-level key(s) {', '.join(extra)} (scenarios go in [[scenario]] tables)"] \
        if extra else []
    raw = data.get("scenario")
    if not isinstance(raw, list) or not raw:
        raise ScenarioError([*problems, f"{path}: no [[scenario]] table"])
    scenarios: list[Scenario] = []
    for index, item in enumerate(raw):
        label = f"{path}: scenario {index + 1}" + (f" ({item['name']})" if isinstance(item.get("name"), str) else "")
        try:
            scenarios.append(Scenario.model_validate({**item, "source": str(path)}))
        except ValidationError as exc:
            problems += [f"{label}: {_where(err['loc'])}{err['msg']}{_hint(err)}"
                         for err in exc.errors(include_input=False, include_url=False)]
    if problems:
        raise ScenarioError(problems)
    return scenarios


def load(paths: Iterable[Path]) -> list[Scenario]:
    """The scenarios of files and folders (every *.toml under a folder, in name order), all checked first."""
    problems: list[str] = []
    found: list[Scenario] = []
    for path in paths:
        if path.is_dir():
            files = sorted(path.rglob("*.toml"))
            if not files:
                problems.append(f"{path}: no *.toml scenario files in this folder")
        elif path.exists():
            files = [path]
        else:
            problems.append(f"{path}: no such file or folder")
            files = []
        for file in files:
            try:
                found += load_file(file)
            except ScenarioError as exc:
                problems += exc.problems
    seen: dict[str, str] = {}
    for scenario in found:
        if scenario.name in seen:
            problems.append(f"{scenario.source}: scenario name {scenario.name} is also used in {seen[scenario.name]}")
        seen.setdefault(scenario.name, scenario.source)
    if problems:
        raise ScenarioError(problems)
    return found


def fill(scenario: Scenario, values: dict[str, str]) -> Scenario:
    """The scenario with its placeholders replaced by this run's addresses and secret."""
    return Scenario.model_validate(_fill(scenario.model_dump(), values))


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace(key, replacement)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


def _hint(err: Any) -> str:
    """For an unknown key, the nearest key the format has (a typo's likely meaning)."""
    if err["type"] != "extra_forbidden" or not err["loc"]:
        return ""
    known = {name for model in (Scenario, Page, File, McpTool, Note, Fault, Turn, ToolCall, Step, Expect,
                                LedgerCheck) for name in model.model_fields if name != "source"}
    close = difflib.get_close_matches(str(err["loc"][-1]), sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in loc]
    text = "".join(parts).lstrip(".")
    return f"{text}: " if text else ""


__all__ = ["Expect", "Scenario", "ScenarioError", "Step", "Turn", "fill", "load",
           "load_file"]
