"""Notes for a run: before the first model call, the notes that match the request are added to it, fenced as data
with their ids, within ARIA_KNOWLEDGE_TOKENS; the system prompt asks the model to cite them and to say "I have no
note about that" rather than guess. A follow-up that leans on the conversation ("and its password?") is first
rewritten into a standalone query by the cheap model, within the run's budget; a self-contained question, or one
without a conversation, is searched as it is.

Notes that are not the owner's own words (runbooks, documents, web and tool findings) taint the run with their
source, like any untrusted content: what the run then does is shown to the owner with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aria.agent.state import RunState
from aria.agent.toolrun import ToolRunner
from aria.config import Settings
from aria.errors import BudgetExhausted, PriceUnknown
from aria.knowledge import Knowledge
from aria.knowledge.context import (
    PROMPT_LINES,
    REWRITE_TOKENS,
    clean_query,
    fit,
    notes_block,
    refers_back,
    rewrite_messages,
)
from aria.ledger import Ledger, Step
from aria.llm.client import AllModelsFailed, ModelCaller
from aria.llm.router import Router

log = logging.getLogger(__name__)
CANDIDATES = 8  # notes considered before the token budget picks


class NoteRecall:
    """Adds the notes that match a request to its first turn."""

    def __init__(self, knowledge: Knowledge, settings: Settings, ledger: Ledger, runner: ToolRunner,
                 caller: ModelCaller | None, router: Router) -> None:
        self.knowledge = knowledge
        self.budget = settings.knowledge_tokens
        self.rewrite = settings.knowledge_rewrite
        self.ledger = ledger
        self.runner = runner
        self.caller = caller
        self.router = router

    async def attach(self, state: RunState, past: list[dict[str, Any]]) -> None:
        """Put the matching notes (or the fact that none match) in the run's messages; nothing when the budget is 0.
        The caller calls it only when notes exist (read with the run's opening transaction)."""
        if self.budget <= 0:
            return
        asked = state.request.text
        query = await self._standalone(state, past) if past and self.rewrite and refers_back(asked) else asked
        # Off the event loop: the first search loads the embedding model, and every search reads the index.
        hits = fit(await asyncio.to_thread(self.knowledge.search, query, CANDIDATES), self.budget)
        system, user = state.messages[0], state.messages[-1]
        system["content"] += "".join(f"\n- {line}" for line in PROMPT_LINES)
        user["content"] = f"{user['content']}\n\n{notes_block(hits)}"
        for source in dict.fromkeys(f"{h.source} (notes)" for h in hits if h.kind != "owner"):
            self.runner.taint(state.scope, state.provenance, source)
        found = ", ".join(str(h.id) for h in hits) or "none"
        self.ledger.add_step(Step(run_id=state.scope.run_id, seq=next(state.scope.seq), kind="guard", name="recall",
                                  status="ok", started_at=self.ledger.now(), args=query[:300],
                                  result=f"notes: {found}"))

    async def _standalone(self, state: RunState, past: list[dict[str, Any]]) -> str:
        """The request rewritten from the conversation by the cheap model; the request itself when that cannot
        be done within the budget or no model answers."""
        if self.caller is None:
            return state.request.text
        try:
            result = await self.caller.chat(state.scope, rewrite_messages(past, state.request.text), [],
                                            [self.router.cheap], want_tokens=REWRITE_TOKENS, min_tokens=16)
        except (BudgetExhausted, AllModelsFailed, PriceUnknown) as exc:
            log.info("run %s: searching notes with the request as asked (%s)", state.scope.run_id, exc)
            return state.request.text
        state.model_calls += 1
        return clean_query(result.text, state.request.text)
