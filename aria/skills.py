"""Skills: typed tools declared with `@tool`, discovered from the built-in and the owner's skills folders.

A skill is one module. Its docstring says what the skill is for; each `@tool` function in it is a tool whose
docstring is the description the model reads and whose signature is its schema. A first parameter named `ctx`
receives the ToolContext and is not part of the schema. A module that fails to import is reported, not swallowed:
it lands in `SkillSet.broken` and the rest load.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from aria.errors import ToolError, ToolInputError

if TYPE_CHECKING:
    import datetime as dt

    from aria.clock import Clock
    from aria.config import Settings
    from aria.connectors import Connectors
    from aria.ledger import Ledger

log = logging.getLogger(__name__)

Risk = Literal["safe", "risky"]
Autonomy = Literal["shadow", "ask", "auto"]
# Where a tool's output comes from when it is not the owner's own words: it taints the run that reads it.
Reads = Literal["web", "event", "document", "forward", "mcp", "notes"]
_TOOL_ATTR = "__aria_tool__"
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ToolContext:
    """What a tool may use: collaborators handed over by the composition root, never globals."""

    settings: Settings
    ledger: Ledger
    clock: Clock
    run_id: int | None = None
    chat_id: int | None = None
    connectors: Connectors | None = None
    # Called after a reminder row is written, so the scheduler can add a job for it.
    on_reminder: Callable[[int, dt.datetime], None] | None = None
    # For a tool that sends requests: the host of a URL it may not reach on its own (a redirect after the run read
    # untrusted content, to a host the owner did not name), or None when it may.
    egress: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A declared tool: its schema, limits and risk."""

    name: str
    description: str
    skill: str
    input_model: type[BaseModel]
    func: Callable[..., Any]
    wants_ctx: bool
    timeout: float
    risk: Risk
    autonomy: Autonomy
    raises: tuple[type[Exception], ...]
    keywords: frozenset[str]
    # Arguments the policy checks: a shell command, a recipient, text that reaches a third party.
    command_arg: str | None = None
    recipient_arg: str | None = None
    outbound_text_args: tuple[str, ...] = ()
    # Provenance: what untrusted content the tool brings in, and the argument naming the URL it reads from or sends
    # a request to (its source, and the host the egress check judges).
    reads: Reads | None = None
    url_arg: str | None = None

    def source(self, arguments: dict[str, Any]) -> str:
        """Where this call's output comes from, for people: "https://host/path (fetch_url)"."""
        where = arguments.get(self.url_arg) if self.url_arg else None
        return f"{where} ({self.name})" if isinstance(where, str) and where else f"{self.reads} content ({self.name})"

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-tool definition, compact: no titles, no empty fields."""
        params = strip_titles(self.input_model.model_json_schema())
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }

    def validate(self, arguments: dict[str, Any]) -> BaseModel:
        """Check the model's arguments; ToolInputError explains what is wrong in a line per field."""
        try:
            return self.input_model.model_validate(arguments)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors(include_input=False, include_url=False)
            ]
            raise ToolInputError(f"invalid arguments for {self.name}: " + "; ".join(problems)) from None

    async def call(self, ctx: ToolContext, arguments: BaseModel) -> Any:
        """Run the tool with validated arguments (sync tools run in a worker thread)."""
        kwargs = {name: getattr(arguments, name) for name in type(arguments).model_fields}
        if self.wants_ctx:
            kwargs = {"ctx": ctx, **kwargs}
        if inspect.iscoroutinefunction(self.func):
            return await self.func(**kwargs)
        return await asyncio.to_thread(self.func, **kwargs)


def tool(
    *,
    timeout: float = 15.0,
    risk: Risk = "safe",
    autonomy: Autonomy | None = None,
    raises: tuple[type[Exception], ...] = (ToolError,),
    keywords: tuple[str, ...] = (),
    command_arg: str | None = None,
    recipient_arg: str | None = None,
    outbound_text_args: tuple[str, ...] = (),
    reads: Reads | None = None,
    url_arg: str | None = None,
) -> Callable[[Callable[..., Awaitable[Any] | Any]], Callable[..., Any]]:
    """Declare a function as a tool. Risky tools default to `ask` autonomy, safe ones to `auto`.

    `command_arg`, `recipient_arg` and `outbound_text_args` name the arguments the policy checks. `reads` says
    what untrusted content the tool's output is (a run that reads it is tainted), and `url_arg` names the argument
    holding the URL the tool sends a request to: its source, and the host the egress check judges.
    """

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        setattr(func, _TOOL_ATTR, {
            "timeout": timeout, "risk": risk, "autonomy": autonomy or ("ask" if risk == "risky" else "auto"),
            "raises": raises, "keywords": keywords, "command_arg": command_arg, "recipient_arg": recipient_arg,
            "outbound_text_args": outbound_text_args, "reads": reads, "url_arg": url_arg,
        })
        return func

    return mark


def spec_from_function(func: Callable[..., Any], skill: str) -> ToolSpec:
    """Build a ToolSpec from a decorated function's signature, type hints and docstring."""
    meta = getattr(func, _TOOL_ATTR)
    doc = inspect.getdoc(func)
    if not doc:
        raise TypeError(f"tool {func.__name__} in skill {skill} needs a docstring: it is what the model reads")
    hints = get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    wants_ctx = False
    for index, (name, param) in enumerate(inspect.signature(func).parameters.items()):
        if index == 0 and name == "ctx":
            wants_ctx = True
            continue
        if name not in hints:
            raise TypeError(f"tool {func.__name__}: parameter {name} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints[name], default)
    model = create_model(
        f"{func.__name__}_input", __config__=ConfigDict(extra="forbid"), **fields
    )
    words = set(meta["keywords"]) | set(_WORD.findall(func.__name__.replace("_", " ")))
    return ToolSpec(
        name=func.__name__, description=doc, skill=skill, input_model=model, func=func, wants_ctx=wants_ctx,
        timeout=meta["timeout"], risk=meta["risk"], autonomy=meta["autonomy"], raises=meta["raises"],
        keywords=frozenset(w.lower() for w in words), command_arg=meta.get("command_arg"),
        recipient_arg=meta.get("recipient_arg"), outbound_text_args=tuple(meta.get("outbound_text_args", ())),
        reads=meta.get("reads"), url_arg=meta.get("url_arg"),
    )


@dataclass(frozen=True)
class Skill:
    """A loaded skill module and its tools."""

    name: str
    description: str
    origin: Path
    tools: tuple[ToolSpec, ...]
    keywords: frozenset[str]


@dataclass(frozen=True)
class BrokenSkill:
    """A skill module that could not be loaded, and why."""

    name: str
    origin: Path
    error: str


@dataclass
class SkillSet:
    """Every loaded skill, the broken ones, and lookup by tool name."""

    skills: list[Skill] = field(default_factory=list)
    broken: list[BrokenSkill] = field(default_factory=list)

    @property
    def tools(self) -> dict[str, ToolSpec]:
        """Tools by name."""
        return {t.name: t for s in self.skills for t in s.tools}

    def select(self, request: str, limit: int = 6) -> list[ToolSpec]:
        """A cheap deterministic pick of the tools a request may need: keyword overlap, best first."""
        words = set(_WORD.findall(request.lower()))
        words |= {w.rstrip("s") for w in words}
        scored: list[tuple[int, str, ToolSpec]] = []
        for skill in self.skills:
            skill_hit = len(words & skill.keywords)
            for spec in skill.tools:
                score = 2 * len(words & spec.keywords) + skill_hit
                if score:
                    scored.append((-score, spec.name, spec))
        return [spec for _, _, spec in sorted(scored)[:limit]]


def builtin_skills_dir() -> Path:
    """The folder of built-in skills, wherever Aria is installed or started from."""
    try:
        import aria_skills  # installed: the top-level skills/ folder ships as this package
    except ModuleNotFoundError:  # running from a source checkout without an install
        return Path(__file__).resolve().parents[1] / "skills"
    return Path(next(iter(aria_skills.__path__)))


def load_skill_file(path: Path, namespace: str) -> Skill:
    """Import one skill module from a file and collect its tools."""
    module_name = f"{namespace}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return _skill_from_module(module, path)


def _skill_from_module(module: ModuleType, path: Path) -> Skill:
    name = path.stem
    functions = [
        obj for obj in vars(module).values()
        if callable(obj) and hasattr(obj, _TOOL_ATTR) and getattr(obj, "__module__", None) == module.__name__
    ]
    tools = tuple(spec_from_function(f, name) for f in functions)
    doc = (module.__doc__ or name).strip().splitlines()[0]
    extra = getattr(module, "KEYWORDS", ())
    return Skill(name=name, description=doc, origin=path, tools=tools,
                 keywords=frozenset({name, *(k.lower() for k in extra)}))


def discover(folders: list[Path]) -> SkillSet:
    """Load every `*.py` skill in the folders; failures are logged loudly and listed, the rest still load."""
    found = SkillSet()
    seen_tools: dict[str, str] = {}
    for index, folder in enumerate(folders):
        if not folder.is_dir():
            found.broken.append(BrokenSkill(folder.name, folder, "skills folder does not exist"))
            log.error("skills folder %s does not exist", folder)
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            try:
                skill = load_skill_file(path, f"aria_skillset{index}")
                clash = [t.name for t in skill.tools if t.name in seen_tools]
                if clash:
                    raise ValueError(f"tool name {clash[0]} already defined by skill {seen_tools[clash[0]]}")
            except Exception as exc:  # noqa: BLE001 - any import failure must be reported, not crash Aria
                error = f"{type(exc).__name__}: {exc}"
                log.error("skill %s failed to load and is skipped: %s", path, error)
                found.broken.append(BrokenSkill(path.stem, path, error))
                continue
            seen_tools.update({t.name: skill.name for t in skill.tools})
            found.skills.append(skill)
    return found


def strip_titles(schema: Any) -> Any:
    """Drop pydantic's `title` keys: they cost tokens and tell the model nothing the name doesn't."""
    if isinstance(schema, dict):
        return {k: strip_titles(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [strip_titles(v) for v in schema]
    return schema
