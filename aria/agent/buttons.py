"""The buttons under a run's last message: offered only when pressing them can change the outcome.

    a request's or its tokens' cap      → "Allow more budget once" (the request runs again with twice the caps)
    the day's cap                       → "Raise today's cap by $X" (today's cap goes up once, then the request runs)
    the step cap                        → "Allow more steps once"
    a handoff, no progress, bad calls   → "Retry with strong model", when the strong model is another model, its
                                          circuit is closed and this run did not already use it
    every model failing                 → "Retry" (an outage passes), plus the strong model if it was not tried
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aria.agent.outcome import Action, StopReason
from aria.agent.state import RunState
from aria.ledger.reports import format_usd
from aria.llm.client import CallScope
from aria.llm.router import Router


@dataclass
class Buttons:
    """Chooses a stopped run's buttons from why it stopped and what is still possible."""

    router: Callable[[], Router]  # the current router (the owner may switch models)
    circuit_open: Callable[[str], bool]
    raise_by: Callable[[], int]  # micro-dollars a "raise today's cap" press adds: one request's cap

    def offer(self, scope: CallScope, stop: StopReason, state: RunState | None) -> list[Action]:
        """The buttons for a run that stopped for `stop`."""
        run_id = scope.run_id
        if stop == "budget":
            cap = state.cap if state is not None else None
            if cap == "day":
                return [Action(f"Raise today's cap by {format_usd(self.raise_by())}", f"retry:raise:{run_id}")]
            return [Action("Allow more budget once", f"retry:budget:{run_id}")]
        if stop == "steps":
            return [Action("Allow more steps once", f"retry:budget:{run_id}")]
        actions = [Action("Retry", f"retry:again:{run_id}")] if stop == "models_failed" else []
        if stop in ("handoff", "no_progress", "invalid_arguments", "models_failed") and self._strong_helps(scope,
                                                                                                         state):
            actions.insert(0, Action("Retry with strong model", f"retry:strong:{run_id}"))
        return actions

    def _strong_helps(self, scope: CallScope, state: RunState | None) -> bool:
        router = self.router()
        if router.strong == router.cheap or self.circuit_open(router.strong):
            return False
        if state is not None and (state.route == "strong" or (state.escalated and router.strong in state.models)):
            return False
        return router.strong not in scope.models_tried
