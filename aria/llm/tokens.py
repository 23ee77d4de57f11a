"""A provable upper bound on the prompt tokens of a request, without a tokenizer.

Byte-level BPE tokenizers (every OpenAI-compatible model family in use) emit at least one byte per token, so the
UTF-8 byte count of what is sent bounds the token count. Chat framing adds a few special tokens per message and
tool; the margins below cover them with room to spare.
"""

from __future__ import annotations

import json
from typing import Any

PER_MESSAGE = 8
PER_TOOL = 16
FIXED = 32


def prompt_upper_bound(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """Tokens the provider can count for these messages and tools, at most."""
    payload = json.dumps([messages, tools or []], ensure_ascii=False, separators=(",", ":"))
    return len(payload.encode("utf-8")) + PER_MESSAGE * len(messages) + PER_TOOL * len(tools or []) + FIXED


def estimate_tokens(text: str) -> int:
    """A typical (not bounding) token count, for trimming history and tool output to a budget."""
    return max(1, len(text.encode("utf-8")) // 4)
