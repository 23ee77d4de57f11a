"""Which model answers: cheap by default, strong when the request needs it, fallbacks when a provider fails.

The rule, in one sentence: a request goes to the strong model when it is long (over 600 characters) or asks for
reasoning work (debug, analyse, plan, compare, explain why, write code), or when the cheap model already handed
off or failed; past `cheap_only_share` of the daily cap, only the cheap model is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Route = Literal["cheap", "strong"]

_HARD = re.compile(
    r"\b(debug|diagnos\w*|analy[sz]\w*|investigat\w*|root cause|plan|compare|trade-?offs?|explain why|"
    r"why (?:is|does|did)|write (?:a |the )?(?:code|script|function)|refactor|step by step)\b",
    re.IGNORECASE,
)
LONG_REQUEST = 600


@dataclass(frozen=True)
class Router:
    """Chooses the route and the model chain for a request."""

    cheap: str
    strong: str
    fallbacks: tuple[str, ...] = ()
    cheap_only_share: float = 0.8

    def route(self, request: str, *, escalate: bool = False) -> Route:
        """The tier a request starts on."""
        if escalate or len(request) > LONG_REQUEST or _HARD.search(request):
            return "strong"
        return "cheap"

    def chain(self, route: Route, *, day_share_used: float = 0.0) -> list[str]:
        """Models to try in order; only the cheap one (and fallbacks) once the day is mostly spent."""
        if day_share_used >= self.cheap_only_share:
            first = [self.cheap]
        elif route == "strong":
            first = [self.strong, self.cheap]
        else:
            first = [self.cheap, self.strong]
        ordered: list[str] = []
        for model in [*first, *self.fallbacks]:
            if model and model not in ordered:
                ordered.append(model)
        return ordered
