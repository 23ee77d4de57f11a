"""What the owner changes from the chat, above the settings: the daily and per-request caps, a one-day raise of the
daily cap, and the cheap and strong models.

Current values are ledger flags, read where they take effect (a reservation reads the day's cap in its own
transaction), so a change holds for the next request, in every process, without a restart. Every change is a
`SettingChange` row: proposed (waiting for its Confirm press), then applied or cancelled, with who and when.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Connection, bindparam, select, update

from aria.ledger import KeyValue, Ledger, SettingChange

DAY = "override:budget.day"  # micro-dollars
REQUEST = "override:budget.request"  # micro-dollars
MODEL = {"cheap": "override:model.cheap", "strong": "override:model.strong"}

_KV = KeyValue.__table__  # type: ignore[attr-defined]
_CHANGES = SettingChange.__table__  # type: ignore[attr-defined]
# Built once: every reservation reads the day's cap and raise with it.
_READ = select(_KV.c.key, _KV.c.value).where(_KV.c.key.in_(bindparam("keys", expanding=True)))


def raise_key(day: str) -> str:
    """The flag holding the extra micro-dollars allowed on one local day."""
    return f"override:budget.today:{day}"


class Overrides:
    """Reads and changes the owner's overrides; each change leaves an audit row."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def day_cap(self, conn: Connection, base: int, day: str) -> int:
        """The daily cap of `day` in micro-dollars (read in the caller's transaction): the owner's cap, or the
        setting, plus any raise for that day."""
        found = {key: value for key, value in conn.execute(_READ, {"keys": [DAY, raise_key(day)]})}
        cap = int(found.get(DAY, base))
        return cap + int(found.get(raise_key(day), 0))

    def raised_by(self, day: str) -> int:
        """Extra micro-dollars allowed on `day` by "raise today's cap"."""
        return int(self.ledger.get_flag(raise_key(day)) or 0)

    def request_cap(self, base: int, conn: Connection | None = None) -> int:
        """The per-request dollar cap in micro-dollars (read in the caller's transaction when given one)."""
        if conn is None:
            with self.ledger.read_conn() as own:
                return self.request_cap(base, own)
        found = conn.execute(_READ, {"keys": [REQUEST]}).first()
        return int(found[1]) if found is not None else base

    def model(self, tier: Literal["cheap", "strong"]) -> str | None:
        """The model the owner chose for a tier, if any."""
        return self.ledger.get_flag(MODEL[tier])

    # changes --------------------------------------------------------------------------------------------------

    def propose(self, key: str, old: str | None, new: str, *, user_id: int | None, chat_id: int | None,
                run_id: int | None = None) -> int:
        """Record a change waiting for its Confirm press; returns its id."""
        with self.ledger.write_conn() as conn:
            return self.ledger.insert(conn, SettingChange, {
                "key": key, "old_value": old, "new_value": new, "status": "proposed", "user_id": user_id,
                "chat_id": chat_id, "run_id": run_id, "created_at": self.ledger.now()})

    def get(self, change_id: int) -> SettingChange | None:
        """One change by id."""
        with self.ledger.read() as s:
            return s.get(SettingChange, change_id)

    def apply(self, change_id: int, user_id: int | None) -> SettingChange | None:
        """Apply a proposed change once (compare-and-set: a second press finds it applied); None when it was not
        proposed. The flag and the audit row change in one transaction."""
        with self.ledger.write_conn() as conn:
            taken = conn.execute(update(_CHANGES).where(_CHANGES.c.id == change_id, _CHANGES.c.status == "proposed")
                                 .values(status="applied", decided_at=self.ledger.now(),
                                         user_id=user_id)).rowcount
            if not taken:
                return None
            row = conn.execute(select(_CHANGES).where(_CHANGES.c.id == change_id)).mappings().one()
            self._set(conn, row["key"], row["new_value"])
        return self.get(change_id)

    def cancel(self, change_id: int, user_id: int | None) -> bool:
        """Cancel a proposed change; False when it was decided already."""
        with self.ledger.write_conn() as conn:
            return bool(conn.execute(update(_CHANGES).where(_CHANGES.c.id == change_id,
                                                            _CHANGES.c.status == "proposed")
                                     .values(status="cancelled", decided_at=self.ledger.now(),
                                             user_id=user_id)).rowcount)

    def record(self, key: str, old: str | None, new: str, *, user_id: int | None, chat_id: int | None) -> None:
        """Apply a change at once (no confirmation needed), with its audit row, in one transaction."""
        with self.ledger.write_conn() as conn:
            now = self.ledger.now()
            self.ledger.insert(conn, SettingChange, {
                "key": key, "old_value": old, "new_value": new, "status": "applied", "user_id": user_id,
                "chat_id": chat_id, "created_at": now, "decided_at": now})
            self._set(conn, key, new)

    def _set(self, conn: Connection, key: str, value: str) -> None:
        if key.startswith("budget.today:"):
            flag = raise_key(key.split(":", 1)[1])
            current = conn.execute(_READ, {"keys": [flag]}).first()
            value = str((int(current[1]) if current else 0) + int(value))  # raises add up within the day
        else:
            flag = {"budget.day": DAY, "budget.request": REQUEST, "model.cheap": MODEL["cheap"],
                    "model.strong": MODEL["strong"]}[key]
        conn.execute(_KV.delete().where(_KV.c.key == flag))
        if value:  # empty: back to the setting
            conn.execute(_KV.insert().values(key=flag, value=value, updated_at=self.ledger.now()))


__all__ = ["Overrides", "raise_key"]
