"""The editor: the cheap model reviews every draft meant for a third party, after the policy's text rules.

The reviewer is itself a model, so it is treated as one that may be hijacked (by the draft it reads) or sloppy: the
draft reaches it fenced as data, and only a reply in the strict form `PASS` or `REJECT: <rule>: <reason>` counts.
Anything else is a rejection (fail closed). A review that cannot be made (budget spent, models down, no price) is
`unavailable`: the caller asks the owner instead of sending unreviewed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from aria.agent.fence import fence
from aria.agent.prompts import DRAFT_REVIEW
from aria.errors import BudgetExhausted, PriceUnknown
from aria.llm.client import AllModelsFailed, CallScope, ModelCaller

RULE = "editor-review"  # the rule a rejection by the editor is reported under
REVIEW_TOKENS = 80  # a verdict is one short line
_PASS = re.compile(r"PASS\.?")
_REJECT = re.compile(r"REJECT\s*:\s*([A-Za-z][A-Za-z -]{0,30}?)\s*:\s*(\S.{0,300})")  # one line
_UNSAFE = re.compile(r"[^\w .,;:'%$€£()/-]")
ReviewVerdict = Literal["pass", "reject", "unavailable"]


@dataclass(frozen=True)
class Review:
    """The editor's verdict on one draft; `reason` says why it was rejected or could not be made."""

    verdict: ReviewVerdict
    reason: str = ""


PASSED = Review("pass")


def parse_verdict(reply: str | None) -> Review:
    """The strict reading of the editor's reply: `PASS`, `REJECT: <rule>: <reason>`, anything else rejects."""
    text = (reply or "").strip()
    if _PASS.fullmatch(text):
        return PASSED
    match = _REJECT.fullmatch(text)
    if match is None:
        return Review("reject", "the editor's answer was not PASS or REJECT: <rule>: <reason>, so the draft "
                                "counts as rejected")
    return Review("reject", f"{_tidy(match.group(1)).lower()}: {_tidy(match.group(2))}")


def _tidy(text: str) -> str:
    # The reason reaches the owner and the model: one short line of plain characters, whatever the reviewer wrote.
    return " ".join(_UNSAFE.sub(" ", text).split())[:160].rstrip(" .") or "no reason given"


class Editor:
    """Reviews drafts with the cheap model, charged to the run's budget (its CallScope)."""

    def __init__(self, caller: ModelCaller, model: str) -> None:
        self.caller = caller
        self.model = model

    async def review(self, scope: CallScope, draft: str) -> Review:
        """One review call; never raises for budget or model trouble (that is an `unavailable` review)."""
        messages = [{"role": "system", "content": DRAFT_REVIEW}, {"role": "user", "content": fence("draft", draft)}]
        try:
            result = await self.caller.chat(scope, messages, [], [self.model], want_tokens=REVIEW_TOKENS,
                                            min_tokens=8)
        except BudgetExhausted as exc:
            return Review("unavailable", f"the budget ran out ({exc.detail})")
        except (AllModelsFailed, PriceUnknown) as exc:
            return Review("unavailable", f"the review model could not answer ({type(exc).__name__})")
        return parse_verdict(result.text)
