"""The ledger's tables. Times are aware UTC (stored as UTC); money is integer micro-dollars (1 USD = 1_000_000).

The schema itself is created and upgraded by the named migrations in `migrations.py`; these models must match it
(a test compares them).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from sqlalchemy import String, case
from sqlmodel import Field, SQLModel, col

RunStatus = Literal[
    "running", "ok", "handoff", "degraded", "awaiting_approval", "rejected", "budget_exhausted", "failed",
    "interrupted", "skipped",
]
StepKind = Literal["llm", "tool", "guard"]
# started: a risky tool is acting; unknown: the process stopped while it acted (it may have run).
StepStatus = Literal["ok", "error", "timeout", "refused", "skipped", "started", "unknown"]
SpendStatus = Literal["reserved", "settled", "released"]
Handling = Literal["retried", "fell_back", "degraded", "handed_off", "refused", "reported", "recorded", "corrected"]
# unknown: the process stopped while the action executed, so it may or may not have run (never "not run").
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "executing", "executed", "failed", "unknown"]
OutboxStatus = Literal["pending", "delivered", "refused"]
OutboxKind = Literal["text", "photo", "edit", "document"]
ChangeStatus = Literal["proposed", "applied", "cancelled"]

MICROS = 1_000_000


def usd_to_micros(usd: float) -> int:
    """Dollars to integer micro-dollars."""
    return round(usd * MICROS)


class Run(SQLModel, table=True):
    """One attempt to handle a trigger."""

    id: int | None = Field(default=None, primary_key=True)
    trigger: str  # message, command, schedule, event, approval
    channel: str  # telegram, terminal, scheduler, webhook
    chat_id: int | None = None
    user_id: int | None = None
    request: str = ""
    route: str | None = None  # cheap or strong
    model: str | None = None
    status: RunStatus = Field(default="running", index=True, sa_type=String)
    stop_reason: str | None = None
    cap_tokens: int = 0
    cap_micros: int = 0
    cap_steps: int = 0
    cap_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    steps: int = 0
    started_at: dt.datetime = Field(index=True)
    ended_at: dt.datetime | None = None
    final_text: str | None = None  # what the owner was sent
    answer: str | None = None  # what later turns' history recalls: the model's own answer, without Aria's additions
    worker: str | None = None  # the process working on it ("pid:start time"), so recovery leaves live runs alone
    checkpoint: str | None = None  # the run's state after its last completed step (JSON), to resume from


class Step(SQLModel, table=True):
    """One attempt inside a run: a model call, a tool call, a guard check or an approval."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="run.id")
    seq: int = 0
    kind: StepKind = Field(sa_type=String)
    name: str
    skill: str | None = None
    status: StepStatus = Field(sa_type=String)
    attempt: int = 0
    started_at: dt.datetime = Field(index=True)
    latency_ms: int = 0
    error_type: str | None = None
    args: str | None = None  # redacted
    result: str | None = None  # short


class Spend(SQLModel, table=True):
    """One priced call: reserved before, settled to the provider's usage after."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, index=True, foreign_key="run.id")
    step_id: int | None = None
    provider: str
    model: str
    status: SpendStatus = Field(default="reserved", sa_type=String)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    reserved_tokens: int = 0
    reserved_micros: int = 0
    cost_micros: int = 0
    price_known: bool = True
    price_source: str = ""
    usage_json: str | None = None
    day: str  # the owner's local date, YYYY-MM-DD (indexed with other columns, see migration m005)
    created_at: dt.datetime = Field(index=True)
    settled_at: dt.datetime | None = None
    # The recorded message a call was made for before its run opened (a voice note's transcription): the run that
    # answers the message adopts the row, so it counts against that run's caps.
    event_id: int | None = None


# What a spend row counts for, against caps and in every report: an open reservation its worst case, a settled call
# its cost, a released reservation nothing.
COUNTED_MICROS = case((col(Spend.status) == "reserved", col(Spend.reserved_micros)),
                      (col(Spend.status) == "settled", col(Spend.cost_micros)), else_=0)
IS_COUNTED = col(Spend.status).in_(("settled", "reserved"))


class Failure(SQLModel, table=True):
    """One thing that went wrong and how it was handled."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, index=True)
    step_id: int | None = None
    component: str  # llm, tool, telegram, connector, skills, scheduler, web
    error_type: str
    message: str
    handling: Handling = Field(sa_type=String)
    created_at: dt.datetime = Field(index=True)


class Approval(SQLModel, table=True):
    """A risky action waiting for the owner."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, index=True)
    tool: str
    args_json: str
    args_hash: str
    risk: str
    summary: str
    status: ApprovalStatus = Field(default="pending", index=True, sa_type=String)
    chat_id: int | None = None
    message_id: int | None = None
    resume_state: str | None = None
    created_at: dt.datetime
    expires_at: dt.datetime = Field(index=True)
    decided_by: int | None = None
    decided_at: dt.datetime | None = None
    executed_at: dt.datetime | None = None
    result: str | None = None
    skill: str | None = None


class Outbox(SQLModel, table=True):
    """A proactive message to deliver, retried until it is."""

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int
    kind: OutboxKind = Field(default="text", sa_type=String)  # an edit changes message `edit_message_id`
    text: str = ""
    payload: bytes | None = None
    reply_markup: str | None = None
    dedupe_key: str | None = Field(default=None, unique=True)
    created_at: dt.datetime = Field(index=True)
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    last_error: str | None = None
    delivered_at: dt.datetime | None = Field(default=None, index=True)
    purpose: str = "message"  # message, answer, digest, alert, reminder, approval, event
    parse_mode: str | None = None
    run_id: int | None = None
    message_id: int | None = None  # the Telegram message it became
    status: OutboxStatus = Field(default="pending", sa_type=String)
    channel: str = "telegram"  # the channel that delivers it: telegram, terminal
    approval_id: int | None = None  # the approval whose buttons it carries (delivery records the message id)
    edit_message_id: int | None = None  # for an edit, the message changed; for an answer, a progress message
    file_name: str | None = None  # a document's name (kind `document`, its bytes in `payload`)


class Event(SQLModel, table=True):
    """An inbound call: a webhook event or a Telegram update that was refused or deduplicated."""

    id: int | None = Field(default=None, primary_key=True)
    source: str
    delivery_id: str | None = None
    verified: bool = False
    status: str  # accepted, refused, duplicate
    reason: str | None = None
    user_id: int | None = None
    body_sha256: str | None = None
    run_id: int | None = None
    received_at: dt.datetime = Field(index=True)
    payload: str | None = None  # the verified body, kept to build the run and to order by event time
    event_at: dt.datetime | None = None  # the source's own timestamp, when it has one
    processed_at: dt.datetime | None = None
    replay_key: str | None = None  # sha256 of what the sender authenticated; a replay of it is a duplicate


class Breaker(SQLModel, table=True):
    """Persisted circuit-breaker state, so an open circuit stays open across a restart."""

    key: str = Field(primary_key=True)
    state: str = "closed"  # closed, open, half_open
    failures: int = 0
    open_until: dt.datetime | None = None
    last_error: str | None = None
    updated_at: dt.datetime


class KeyValue(SQLModel, table=True):
    """Small durable flags: paused state, last digest day, alerts sent."""

    key: str = Field(primary_key=True)
    value: str
    updated_at: dt.datetime


class SettingChange(SQLModel, table=True):
    """A change the owner asked for from the chat (a budget cap, a model), proposed, then applied or cancelled."""

    id: int | None = Field(default=None, primary_key=True)
    key: str  # budget.day, budget.request, budget.today, model.cheap, model.strong
    old_value: str | None = None
    new_value: str
    status: ChangeStatus = Field(default="proposed", sa_type=String)
    user_id: int | None = None
    chat_id: int | None = None
    run_id: int | None = None  # the refused run a "raise today's cap" press retries
    created_at: dt.datetime = Field(index=True)
    decided_at: dt.datetime | None = None


class Reminder(SQLModel, table=True):
    """A reminder the owner asked for; fires once, also after a restart."""

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int
    text: str
    due_at: dt.datetime = Field(index=True)
    created_at: dt.datetime
    run_id: int | None = None
    fired_at: dt.datetime | None = None


class McpPin(SQLModel, table=True):
    """An MCP tool's definition as the owner trusts it (first seen, or accepted), and a changed one awaiting review."""

    __tablename__ = "mcp_pin"

    id: int | None = Field(default=None, primary_key=True)
    server: str
    tool: str
    digest: str  # sha256 of the trusted definition
    definition: str  # the trusted definition: description, input schema, annotations (JSON)
    status: str = "trusted"  # trusted; changed (disabled, owner asked); declined (kept disabled by the owner)
    pending_digest: str | None = None
    pending_definition: str | None = None
    first_seen: dt.datetime
    updated_at: dt.datetime


class EvalRun(SQLModel, table=True):
    """One `aria eval`: which scenarios ran, how, and how many passed."""

    id: int | None = Field(default=None, primary_key=True)
    started_at: dt.datetime = Field(index=True)
    ended_at: dt.datetime | None = None
    mode: str = "scripted"  # scripted (the built-in model) or live (the configured model)
    paths: str = ""  # what was asked to run, as given
    scenarios: int = 0
    passed: int = 0
    failed: int = 0
    cost_micros: int = 0


class EvalResult(SQLModel, table=True):
    """One scenario of an eval run: passed or not, why not, what it cost."""

    id: int | None = Field(default=None, primary_key=True)
    eval_run_id: int = Field(index=True, foreign_key="evalrun.id")
    name: str
    source: str = ""
    passed: bool = False
    failures: str = "[]"  # JSON list of sentences
    cost_micros: int = 0
    steps: int = 0
    model_calls: int = 0
    seconds: float = 0.0


ProposalVerdict = Literal["up", "down"]
RolloutKind = Literal["suggested", "promoted", "demoted", "held"]
RolloutStatus = Literal["open", "applied", "stale", "done"]


class Proposal(SQLModel, table=True):
    """An action a skill in shadow mode would have taken, and the owner's judgement of it (👍 would have approved)."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, index=True)
    skill: str
    tool: str
    risk: str
    args_json: str  # redacted
    summary: str
    sources: str | None = None  # the untrusted content the run had read before proposing it
    chat_id: int | None = None
    outbox_id: int | None = None  # the "I would have done X" message
    verdict: ProposalVerdict | None = Field(default=None, sa_type=String)
    note: str | None = None
    judged_by: int | None = None
    judged_at: dt.datetime | None = None
    created_at: dt.datetime


class Rollout(SQLModel, table=True):
    """A step of a skill's rollout: a promotion suggested (applied only on the owner's press), a promotion, a
    demotion after a critical miss, or a miss that found the skill already at the lowest level."""

    id: int | None = Field(default=None, primary_key=True)
    skill: str
    kind: RolloutKind = Field(sa_type=String)
    from_level: str
    to_level: str
    reason: str
    status: RolloutStatus = Field(default="done", sa_type=String)
    judged: int = 0
    agreed: int = 0
    lower_bound: float = 0.0
    created_at: dt.datetime
    decided_by: int | None = None
    decided_at: dt.datetime | None = None
