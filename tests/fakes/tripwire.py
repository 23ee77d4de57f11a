"""Network tripwire: fail loudly on any connection that leaves the machine.

Tests talk only to the in-process fakes on 127.0.0.1.  A forgotten base URL
would otherwise send real traffic to Telegram or an LLM provider, so every
connect and every name lookup is checked *before* it happens: loopback and
UNIX sockets pass, anything else raises ``RuntimeError`` and is recorded, so
the test fails at teardown even if the code under test swallowed the error
(python-telegram-bot, for one, wraps unknown exceptions into NetworkError and
retries forever).

Patched: ``socket.socket.connect``/``connect_ex``/``sendto`` (asyncio's
``sock_connect`` ends in ``sock.connect`` on a non-blocking socket, so async
clients are covered too), ``socket.getaddrinfo``, ``socket.gethostbyname``,
``socket.gethostbyname_ex`` and ``socket.create_connection``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

__all__ = ["NetworkTripwire", "TripwireViolation", "is_loopback_host"]

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class TripwireViolation(RuntimeError):
    """Raised instead of opening a non-loopback connection."""


def is_loopback_host(host: object) -> bool:
    """True for hosts a test may contact: loopback, unspecified (bind), localhost."""
    if host is None:
        return True  # getaddrinfo(None, port) is a passive/bind lookup
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in ("", "<broadcast>"):
        return name == ""
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False  # a DNS name: resolving it would already leak a query
    if ip.is_loopback or ip.is_unspecified:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return False


class NetworkTripwire:
    """Install with ``install()``/``uninstall()`` or use as a context manager.

    Several tripwires may be active at once (e.g. nested fixtures); each
    records every violation seen while it is installed.
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------

    def install(self) -> None:
        _Patcher.add(self)

    def uninstall(self) -> None:
        _Patcher.remove(self)

    def __enter__(self) -> NetworkTripwire:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def check_host(self, host: object, port: object = None, *, action: str = "connect") -> None:
        """Raise (and record) unless ``host`` is local; usable directly in tests."""
        if is_loopback_host(host):
            return
        if isinstance(host, bytes | bytearray):
            host = bytes(host).decode("ascii", "replace")
        where = f"{host}:{port}" if port is not None else f"{host}"
        message = f"network tripwire: attempted connection to {where} ({action})"
        self._record(message)
        raise TripwireViolation(message)

    def reset(self) -> list[str]:
        """Forget recorded violations and return them."""
        with self._lock:
            seen, self.violations = self.violations, []
        return seen

    @contextlib.contextmanager
    def expect_block(self) -> Iterator[list[str]]:
        """Assert that the block trips the wire, and clear what it recorded.

        Use for tests of the tripwire itself so the teardown check stays green.
        """
        with self._lock:
            before = len(self.violations)
        caught: list[str] = []
        try:
            yield caught
        finally:
            with self._lock:
                caught.extend(self.violations[before:])
                del self.violations[before:]
        if not caught:
            raise AssertionError("expected the network tripwire to block a connection")

    # -- internals ----------------------------------------------------------

    def _record(self, message: str) -> None:
        with self._lock:
            self.violations.append(message)


def _address_host(family: int, address: Any) -> tuple[object, object] | None:
    """Return (host, port) for inet addresses; None for UNIX/netlink/etc."""
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
        return address[0], address[1] if len(address) > 1 else None
    return None


class _Patcher:
    """Process-wide patch shared by all active tripwires (reference counted)."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _active: ClassVar[list[NetworkTripwire]] = []
    _originals: ClassVar[dict[str, Any]] = {}

    @classmethod
    def add(cls, wire: NetworkTripwire) -> None:
        with cls._lock:
            if not cls._active:
                cls._patch()
            cls._active.append(wire)

    @classmethod
    def remove(cls, wire: NetworkTripwire) -> None:
        with cls._lock:
            if wire in cls._active:
                cls._active.remove(wire)
            if not cls._active and cls._originals:
                cls._unpatch()

    @classmethod
    def check(cls, host: object, port: object, action: str) -> None:
        if is_loopback_host(host):
            return
        wires = list(cls._active)
        if not wires:
            return
        error: TripwireViolation | None = None
        for wire in wires:
            try:
                wire.check_host(host, port, action=action)
            except TripwireViolation as exc:
                error = exc
        if error is not None:
            raise error

    @classmethod
    def _patch(cls) -> None:
        orig_connect = socket.socket.connect
        orig_connect_ex = socket.socket.connect_ex
        orig_sendto = socket.socket.sendto
        orig_getaddrinfo = socket.getaddrinfo
        orig_gethostbyname = socket.gethostbyname
        orig_gethostbyname_ex = socket.gethostbyname_ex
        orig_create_connection = socket.create_connection
        cls._originals = {
            "connect": orig_connect,
            "connect_ex": orig_connect_ex,
            "sendto": orig_sendto,
            "getaddrinfo": orig_getaddrinfo,
            "gethostbyname": orig_gethostbyname,
            "gethostbyname_ex": orig_gethostbyname_ex,
            "create_connection": orig_create_connection,
        }

        def connect(self: socket.socket, address: Any) -> None:
            target = _address_host(self.family, address)
            if target is not None:
                cls.check(target[0], target[1], "socket.connect")
            return orig_connect(self, address)

        def connect_ex(self: socket.socket, address: Any) -> int:
            target = _address_host(self.family, address)
            if target is not None:
                cls.check(target[0], target[1], "socket.connect_ex")
            return orig_connect_ex(self, address)

        def sendto(self: socket.socket, data: Any, *args: Any) -> int:
            # UDP (e.g. a hand-rolled DNS query) never calls connect().
            address = args[-1] if args else None
            target = _address_host(self.family, address)
            if target is not None:
                cls.check(target[0], target[1], "socket.sendto")
            return orig_sendto(self, data, *args)  # type: ignore[arg-type]

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            cls.check(host, port, "getaddrinfo")
            return orig_getaddrinfo(host, port, *args, **kwargs)

        def gethostbyname(host: str) -> str:
            cls.check(host, None, "gethostbyname")
            return orig_gethostbyname(host)

        def gethostbyname_ex(host: str) -> tuple[str, list[str], list[str]]:
            cls.check(host, None, "gethostbyname_ex")
            return orig_gethostbyname_ex(host)

        def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            cls.check(address[0], address[1], "create_connection")
            return orig_create_connection(address, *args, **kwargs)

        patches: dict[str, Callable[..., Any]] = {
            "connect": connect,
            "connect_ex": connect_ex,
            "sendto": sendto,
        }
        for name, func in patches.items():
            setattr(socket.socket, name, func)
        socket.getaddrinfo = getaddrinfo
        socket.gethostbyname = gethostbyname
        socket.gethostbyname_ex = gethostbyname_ex
        socket.create_connection = create_connection  # type: ignore[assignment]

    @classmethod
    def _unpatch(cls) -> None:
        originals = cls._originals
        socket.socket.connect = originals["connect"]  # type: ignore[method-assign]
        socket.socket.connect_ex = originals["connect_ex"]  # type: ignore[method-assign]
        socket.socket.sendto = originals["sendto"]  # type: ignore[method-assign]
        socket.getaddrinfo = originals["getaddrinfo"]
        socket.gethostbyname = originals["gethostbyname"]
        socket.gethostbyname_ex = originals["gethostbyname_ex"]
        socket.create_connection = originals["create_connection"]
        cls._originals = {}
