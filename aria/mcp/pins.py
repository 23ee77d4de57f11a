"""Pinned tool definitions: a tool's description and schema are what the owner trusted, or the tool is off.

The first time a tool is seen its definition (description, input schema, annotations) is hashed and stored. Later the
same digest is trusted; a different one disables the tool until the owner accepts it (a message with the diff and
Accept / Keep-disabled buttons). A server cannot rewrite what a trusted tool tells the model behind the owner's back.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlmodel import col, select

from aria.ledger import Ledger, McpPin

PinState = Literal["trusted", "changed", "declined"]
Decision = Literal["accept", "keep"]


def definition_of(description: str | None, input_schema: dict[str, Any], annotations: dict[str, Any] | None) -> str:
    """The canonical JSON of what a tool tells the model and how it says it behaves."""
    return json.dumps({"description": description or "", "input_schema": input_schema,
                       "annotations": annotations or {}}, sort_keys=True, ensure_ascii=False)


def digest_of(definition: str) -> str:
    """The pin: sha256 of the canonical definition."""
    return hashlib.sha256(definition.encode()).hexdigest()


@dataclass(frozen=True)
class PinCheck:
    """What the pin says about a tool as the server lists it now."""

    state: PinState
    pin_id: int
    news: bool  # a change not seen before: the owner must be asked


def diff_text(old: str, new: str) -> str:
    """A unified diff of two definitions, pretty-printed, for the owner."""
    def lines(definition: str) -> list[str]:
        return json.dumps(json.loads(definition), indent=1, sort_keys=True, ensure_ascii=False).splitlines()

    return "\n".join(difflib.unified_diff(lines(old), lines(new), "trusted", "now", lineterm="", n=1))


class PinStore:
    """The `mcp_pin` table: check listed tools against their pins, and record the owner's decisions."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def check(self, server: str, tool: str, definition: str) -> PinCheck:
        """Trust on first sight; the trusted digest stays trusted; anything else waits for the owner."""
        digest = digest_of(definition)
        now = self.ledger.now()
        with self.ledger.write() as s:
            pin = s.exec(select(McpPin).where(McpPin.server == server, McpPin.tool == tool)).first()
            if pin is None:
                pin = McpPin(server=server, tool=tool, digest=digest, definition=definition, first_seen=now,
                             updated_at=now)
                s.add(pin)
                s.flush()
                assert pin.id is not None
                return PinCheck("trusted", pin.id, False)
            assert pin.id is not None
            if pin.digest == digest:
                if pin.status != "trusted":  # changed back to what the owner trusted
                    pin.status, pin.pending_digest, pin.pending_definition, pin.updated_at = "trusted", None, None, now
                    s.add(pin)
                return PinCheck("trusted", pin.id, False)
            if pin.pending_digest == digest:
                return PinCheck("declined" if pin.status == "declined" else "changed", pin.id, False)
            pin.status, pin.pending_digest, pin.pending_definition, pin.updated_at = "changed", digest, definition, now
            s.add(pin)
            return PinCheck("changed", pin.id, True)

    def trusted(self, server: str) -> list[McpPin]:
        """A server's pins, for the tools it had when last seen (so they exist before it connects)."""
        with self.ledger.read() as s:
            return list(s.exec(select(McpPin).where(McpPin.server == server).order_by(col(McpPin.tool))))

    def get(self, pin_id: int) -> McpPin | None:
        """One pin by id."""
        with self.ledger.read() as s:
            return s.get(McpPin, pin_id)

    def find(self, server: str, tool: str) -> McpPin | None:
        """One pin by server and tool."""
        with self.ledger.read() as s:
            return s.exec(select(McpPin).where(McpPin.server == server, McpPin.tool == tool)).first()

    def decide(self, pin_id: int, digest_prefix: str, decision: Decision) -> McpPin | None:
        """Accept the pending definition (it becomes the trusted one) or keep the tool disabled. None when the
        pin has no pending change with that digest (already decided, or changed again since the message)."""
        with self.ledger.write() as s:
            pin = s.get(McpPin, pin_id)
            if pin is None or pin.pending_digest is None or not pin.pending_digest.startswith(digest_prefix):
                return None
            if decision == "accept":
                assert pin.pending_definition is not None
                pin.digest, pin.definition = pin.pending_digest, pin.pending_definition
                pin.status, pin.pending_digest, pin.pending_definition = "trusted", None, None
            else:
                pin.status = "declined"
            pin.updated_at = self.ledger.now()
            s.add(pin)
            s.flush()
            s.expunge(pin)
            return pin
