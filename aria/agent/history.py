"""Conversation history from the ledger, bounded by a token budget rather than a message count."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, select

from aria.conversation import boundary
from aria.ledger import Run
from aria.llm.tokens import estimate_tokens

_LOOKBACK = 20  # runs read per chat; the token budget decides how many are kept
_ANSWERED = ("ok", "degraded", "handoff", "budget_exhausted")
_RUNS = Run.__table__  # type: ignore[attr-defined]
# Built once (every turn runs it); index ix_run_chat (chat_id, id) serves it newest first, touching no other chat.
# `answer`, not `final_text`: what Aria adds for the owner (footers, notes, policy lines) never goes back to the model.
LATEST_EXCHANGES = (
    select(_RUNS.c.request, _RUNS.c.answer)
    .where(_RUNS.c.chat_id == bindparam("chat_id"), _RUNS.c.status.in_(_ANSWERED),
           _RUNS.c.trigger.in_(("message", "command")), _RUNS.c.id < bindparam("before"),
           _RUNS.c.id > bindparam("after"))
    .order_by(_RUNS.c.id.desc()).limit(_LOOKBACK)
)


class History:
    """Earlier exchanges in a chat, newest kept first when the budget is tight."""

    def __init__(self, budget_tokens: int) -> None:
        self.budget = budget_tokens

    def messages(self, conn: Connection, chat_id: int | None, *, before_run: int = 2**62) -> list[dict[str, Any]]:
        """User/assistant pairs of runs before `before_run`, oldest first, that fit in the token budget (read in the
        caller's transaction)."""
        if chat_id is None or self.budget <= 0:
            return []
        kept: list[dict[str, Any]] = []
        left = self.budget
        after = boundary(conn, chat_id)  # /new: nothing from before the current conversation
        for request, answer in conn.execute(LATEST_EXCHANGES, {"chat_id": chat_id, "before": before_run,
                                                               "after": after}):
            cost = estimate_tokens(request) + estimate_tokens(answer or "")
            if cost > left:
                break
            left -= cost
            kept[:0] = [{"role": "user", "content": request}, {"role": "assistant", "content": answer or ""}]
        return kept
