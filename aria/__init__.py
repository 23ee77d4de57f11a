"""Aria: a personal ops agent on Telegram with hard budgets, approvals and a ledger of everything it does."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aria-ops")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.1.0"
