"""Aria's exceptions, one small tree so callers catch at the level they care about.

    AriaError
    ├── ConfigError            a setting is missing or invalid (names the variable, never the secret)
    ├── BudgetExhausted        a cap would be passed by the next call: stop, hand off
    ├── LedgerUnavailable      the ledger cannot be written (disk full, read-only): nothing acts until it can
    ├── AlreadyHandled         another run already took this recorded message (a redelivered copy): do nothing
    ├── ProviderError          an outside service failed (model endpoint, connector)
    │   ├── RetryableProviderError   408/409/429/5xx/connection: worth another attempt
    │   │   ├── PollingStalled       no getUpdates completed within the stall limit: polling restarted
    │   │   └── PollingOutage        getUpdates keeps failing; python-telegram-bot keeps retrying
    │   ├── CircuitOpen              not attempted: the breaker is open
    │   └── PriceUnknown             a model with no known price: refused, fails closed
    └── ToolError              a tool failed; the loop records it and tells the model
        ├── ToolInputError         arguments did not validate: the model may correct once
        │   └── ToolNotOffered     a tool this run was not offered (nor shown by list_tools): refused, never run
        ├── ToolTimeout            the tool ran past its timeout
        ├── AddressRefused         a URL leads to an address the web tools may not reach (loopback, private, ...)
        └── ConnectorDown          the service behind a tool is unreachable: degrade
"""

from __future__ import annotations


class AriaError(Exception):
    """Base of every error Aria raises on purpose."""


class ConfigError(AriaError):
    """Settings are missing or invalid; `problems` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class BudgetExhausted(AriaError):
    """The next model call cannot fit in what is left of a cap."""

    def __init__(self, cap: str, detail: str) -> None:
        self.cap = cap
        self.detail = detail
        super().__init__(f"{cap} cap reached: {detail}")


class LedgerUnavailable(AriaError):
    """The ledger refused a write (disk full, read-only file, I/O error): Aria must not act while it cannot record."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the ledger cannot be written: {reason}")


class AlreadyHandled(AriaError):
    """The recorded message a request answers was already taken by another run: this copy does nothing."""


class ProviderError(AriaError):
    """An outside service failed."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class RetryableProviderError(ProviderError):
    """A failure that another attempt may fix (timeouts, 408/409/429/5xx, connection errors)."""


class PollingStalled(RetryableProviderError):
    """No getUpdates round trip completed for longer than the stall limit; polling was restarted."""


class PollingOutage(RetryableProviderError):
    """getUpdates is failing; python-telegram-bot keeps retrying."""


class CircuitOpen(ProviderError):
    """The circuit for this endpoint is open; the call was not attempted."""


class PriceUnknown(ProviderError):
    """No price is known for the model, so a dollar cap cannot be enforced; the call is refused."""


class ToolError(AriaError):
    """A tool failed. The message is shown to the model as data and recorded as a failure."""


class ToolInputError(ToolError):
    """The model's arguments for a tool did not validate."""


class ToolNotOffered(ToolInputError):
    """The model called a tool this run was neither offered nor shown by list_tools; it is refused, not run."""


class ToolTimeout(ToolError):
    """The tool did not finish within its timeout."""


class AddressRefused(ToolError):
    """A request would reach a loopback, private, link-local or metadata address ARIA_FETCH_ALLOW does not allow."""


class ConnectorDown(ToolError):
    """The service behind a tool is unreachable; the answer should degrade, not fail."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"{service} is unreachable: {reason}")
