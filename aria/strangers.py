"""Who was refused: a message from someone not in ARIA_OWNER_IDS is logged at WARNING (once per user per day) and
listed by `aria doctor`, so an owner id with a typo is found in seconds instead of looking like a silent bot."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func
from sqlmodel import col, select

from aria.ledger import Event, Ledger, as_utc

if TYPE_CHECKING:
    from telegram import Update

    from aria.app import Aria

log = logging.getLogger("aria.owners")
NON_OWNER = "from a non-owner"  # the refusal reason's tail, as the owner guard records it


@dataclass(frozen=True)
class Refused:
    """A user the owner guard refused, and how often."""

    user_id: int
    updates: int
    last: dt.datetime


class Strangers:
    """Remembers whom it warned about today, so a chatty stranger is one log line a day."""

    def __init__(self) -> None:
        self.warned: dict[int, dt.date] = {}  # user id -> the day its warning was logged

    def first_today(self, user_id: int, today: dt.date) -> bool:
        """True the first time `user_id` is seen on `today`."""
        if self.warned.get(user_id) == today:
            return False
        if len(self.warned) > 10_000:  # many strangers: forget earlier days rather than grow without end
            self.warned = {k: day for k, day in self.warned.items() if day == today}
        self.warned[user_id] = today
        return True


def warn_stranger(aria: Aria, update: Update) -> None:
    """Log a non-owner's private message at WARNING with its user id, once per user per (UTC) day."""
    user, chat = update.effective_user, update.effective_chat
    if user is None or chat is None or chat.type != "private":
        return
    if not aria.strangers.first_today(user.id, aria.ledger.now().date()):
        return
    log.warning("refused a private message from Telegram user %s (@%s): not in ARIA_OWNER_IDS %s. If that is you, "
                "put %s in ARIA_OWNER_IDS.", user.id, user.username or "-", aria.settings.owner_ids or "[]", user.id)


def refused_users(ledger: Ledger, limit: int = 5) -> list[Refused]:
    """The users refused most recently, newest first."""
    last = func.max(col(Event.received_at))
    query = (select(col(Event.user_id), func.count(), last)
             .where(col(Event.source) == "telegram", col(Event.status) == "refused",
                    col(Event.user_id).is_not(None), col(Event.reason).endswith(NON_OWNER))
             .group_by(col(Event.user_id)).order_by(last.desc()).limit(limit))
    with ledger.read() as s:
        return [Refused(int(user_id), int(count), as_utc(when)) for user_id, count, when in s.exec(query)
                if user_id is not None]
