"""Which addresses the web tools may reach: public ones, and what ARIA_FETCH_ALLOW adds.

A URL the model asks for can name any host, and a hijacked model names the ones that hurt: services on loopback,
the LAN, a cloud's metadata endpoint. The rule:

* Refused: loopback, private (RFC 1918, ULA fc00::/7), shared CGNAT (100.64.0.0/10), link-local (169.254.0.0/16,
  fe80::/10), multicast, unspecified, reserved and every other address that is not globally routable, and the
  cloud metadata addresses and names (169.254.169.254, fd00:ec2::254, metadata.google.internal, ...). An IPv4
  address carried inside IPv6 (mapped ::ffff:a.b.c.d, 6to4, NAT64) is judged as that IPv4 address.
* Checked after DNS resolution: every address a name resolves to must pass, and the caller connects only to those
  addresses (the connectors' guarded transport resolves once per connection and never again), so a name that
  re-resolves to 127.0.0.1 between check and connect gets nowhere. Redirects are new connections, checked alike.
* `ARIA_FETCH_ALLOW` lists exceptions: host names (`nas.home.arpa`), suffix patterns (`*.corp.example`: any name
  under corp.example) and networks (`10.0.0.0/8`, `127.0.0.1`). A name that matches allows every address it
  resolves to; a network allows the addresses inside it, whatever name led there.

This module decides; `aria.connectors` enforces it at connect time for connectors made with a guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aria.errors import AddressRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, as strings. Tests inject their own; the default asks the system.
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
))
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
    "metadata.tencentyun.com",
})
REFUSED_SUMMARY = ("loopback, private (RFC 1918, ULA), CGNAT, link-local, multicast, unspecified, reserved and "
                   "cloud metadata addresses, after DNS resolution and on every redirect")

_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
# Hosts the C resolver reads as IPv4 in the old inet_aton forms: 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


def refusal(address: IPAddress) -> str | None:
    """Why the web tools may not reach `address` ("a loopback address", ...), or None for a public address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        if embedded is not None:
            inner = refusal(embedded)
            return f"{inner} inside an IPv6 address" if inner else None
    checks: tuple[tuple[bool, str], ...] = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address in _CGNAT, "a shared (CGNAT) address"),
        (any(address in network for network in _PRIVATE), "a private address"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "a site-local address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "a special-purpose address that is not publicly routable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address, or None when it is a name.

    An IPv6 zone (%eth0) is dropped, and the legacy IPv4 forms every system resolver accepts without a DNS query
    (decimal 2130706433, hex 0x7f.1, octal 0177.0.0.1, short 127.1) count as the address they mean.
    """
    text = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if not _LEGACY_IPV4.fullmatch(text.rstrip(".")):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
    except OSError:
        return None


def normal_name(host: str) -> str:
    """A host name as the rule compares it: lower case, without the root's trailing dot."""
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class FetchAllow:
    """The exceptions ARIA_FETCH_ALLOW grants: exact host names, `*.suffix` patterns and networks."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".corp.example" for the pattern *.corp.example
    networks: tuple[IPNetwork, ...] = ()
    entries: tuple[str, ...] = ()  # as written, for `aria doctor`

    @classmethod
    def parse(cls, entries: Iterable[str]) -> FetchAllow:
        """Parse the setting's entries; ValueError names the first one that is not a host, pattern or CIDR."""
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        kept: list[str] = []
        for raw in entries:
            entry = normal_name(raw)
            if not entry:
                continue
            kept.append(entry)
            if "/" in entry or parse_address(entry) is not None:
                try:
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError:
                    raise ValueError(f"{raw.strip()!r} is not a valid network (CIDR)") from None
            elif entry.startswith("*."):
                suffixes.append("." + _hostname(entry[2:], raw))
            else:
                hosts.add(_hostname(entry, raw))
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks), tuple(kept))

    def allows_name(self, host: str) -> bool:
        """True when the host name itself is allowed (then every address it resolves to is)."""
        name = normal_name(host)
        return name in self.hosts or any(name.endswith(suffix) for suffix in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        """True when an allowed network holds the address (or the IPv4 address a mapped IPv6 one carries)."""
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(a in network for a in candidates for network in self.networks if a.version == network.version)

    def describe(self) -> str:
        """What the setting allows, for people."""
        return ", ".join(self.entries) if self.entries else "nothing"


def _hostname(name: str, raw: str) -> str:
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(f"{raw.strip()!r} is not a valid host name") from None
    if not ascii_name or not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise ValueError(f"{raw.strip()!r} is not a host name, a *.suffix pattern or a CIDR")
    return ascii_name


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Applies the rule: to a URL before any network access, and to a host's resolved addresses at connect time."""

    def __init__(self, allow: FetchAllow, resolver: Resolver = system_resolver) -> None:
        self.allow = allow
        self._resolver = resolver

    def check_target(self, target: str, host: str) -> None:
        """Refuse, without network access, a host that is a refused address literal or a metadata name.

        `target` is how the refusal names the request (a URL without its query string).
        """
        if self.allow.allows_name(host):
            return
        if normal_name(host) in METADATA_NAMES:
            raise AddressRefused(_message(target, f"{host} is a cloud metadata name"))
        address = parse_address(host)
        if address is not None:
            self._check_address(target, host, address)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses a connection to `host` may use: every one it resolves to, each checked.

        Raises AddressRefused when any address is refused (one bad address refuses the name), OSError when the
        name does not resolve.
        """
        target = f"{host}:{port}"
        self.check_target(target, host)
        literal = parse_address(host)
        if literal is not None:
            return [str(literal)]  # connect to the address checked, never to a spelling the resolver re-reads
        addresses = await self._resolver(host, port)
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        if not self.allow.allows_name(host):
            for text in addresses:
                address = parse_address(text)
                if address is None:
                    raise AddressRefused(_message(target, f"{host} resolves to {text!r}, which is not an address"))
                self._check_address(target, f"{host} resolves to {text}, which", address)
        return addresses

    def _check_address(self, target: str, subject: str, address: IPAddress) -> None:
        reason = refusal(address)
        if reason is not None and not self.allow.allows_address(address):
            raise AddressRefused(_message(target, f"{subject} is {reason}"))


def _message(target: str, why: str) -> str:
    return (f"refused {target}: {why}; fetch_url and check_url reach only public addresses "
            "unless the owner allows the host or network in ARIA_FETCH_ALLOW")
