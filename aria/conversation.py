"""Conversations: `/new` starts a fresh one in a chat. Nothing said before it goes to the model afterwards; the
ledger keeps every run all the same.

The boundary is a ledger flag per chat holding the id of the last run before `/new`: history reads only runs
after it (run ids only grow, so no clock is involved).
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select

from aria.ledger import KeyValue, Ledger, Run

_KV = KeyValue.__table__  # type: ignore[attr-defined]
_RUNS = Run.__table__  # type: ignore[attr-defined]
_BOUNDARY = select(_KV.c.value).where(_KV.c.key == bindparam("key"))


def boundary_key(chat_id: int) -> str:
    """The flag holding a chat's conversation boundary."""
    return f"conversation:{chat_id}"


def boundary(conn: Connection, chat_id: int) -> int:
    """The id of the last run before the chat's current conversation (0: everything counts), read in the caller's
    transaction."""
    value = conn.execute(_BOUNDARY, {"key": boundary_key(chat_id)}).scalar_one_or_none()
    return int(value) if value is not None else 0


def start_new(ledger: Ledger, chat_id: int) -> int:
    """Start a fresh conversation in a chat; returns how many earlier exchanges are left out from now on."""
    with ledger.write_conn() as conn:
        last = int(conn.execute(select(func.coalesce(func.max(_RUNS.c.id), 0))).scalar_one())
        before = boundary(conn, chat_id)
        dropped = int(conn.execute(select(func.count()).select_from(_RUNS).where(
            _RUNS.c.chat_id == chat_id, _RUNS.c.id > before, _RUNS.c.trigger.in_(("message", "command")))).scalar_one())
        conn.execute(_KV.delete().where(_KV.c.key == boundary_key(chat_id)))
        conn.execute(_KV.insert().values(key=boundary_key(chat_id), value=str(last), updated_at=ledger.now()))
    return dropped


def new_text(dropped: int) -> str:
    """The answer to /new."""
    if not dropped:
        return "New conversation started (there was nothing earlier to leave out)."
    return (f"New conversation: the {dropped} earlier exchange{'s' if dropped != 1 else ''} will no longer be sent "
            "to the model. Everything stays in the ledger (/trace, /export).")
