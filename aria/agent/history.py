"""Conversation history from the ledger, bounded by a token budget rather than a message count."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from aria.ledger import Ledger, Run
from aria.llm.tokens import estimate_tokens

_LOOKBACK = 20  # runs read per chat; the token budget decides how many are kept
_ANSWERED = ("ok", "degraded", "handoff", "budget_exhausted")


class History:
    """Earlier exchanges in a chat, newest kept first when the budget is tight."""

    def __init__(self, ledger: Ledger, budget_tokens: int) -> None:
        self.ledger = ledger
        self.budget = budget_tokens

    def messages(self, chat_id: int | None, *, exclude_run: int | None = None) -> list[dict[str, Any]]:
        """User/assistant pairs, oldest first, that fit in the token budget."""
        if chat_id is None or self.budget <= 0:
            return []
        with self.ledger.read() as s:
            rows = s.exec(
                select(Run.request, Run.final_text)
                .where(Run.chat_id == chat_id, col(Run.status).in_(_ANSWERED), Run.id != (exclude_run or -1),
                       col(Run.trigger).in_(("message", "command")))
                .order_by(col(Run.id).desc()).limit(_LOOKBACK)
            ).all()
        kept: list[dict[str, Any]] = []
        left = self.budget
        for request, answer in rows:
            cost = estimate_tokens(request) + estimate_tokens(answer or "")
            if cost > left:
                break
            left -= cost
            kept[:0] = [{"role": "user", "content": request}, {"role": "assistant", "content": answer or ""}]
        return kept
