"""The address rule behind fetch_url/check_url: what is refused, what ARIA_FETCH_ALLOW allows, and its checks.

Resolution goes through an injected resolver, so nothing here touches a network.
"""

from __future__ import annotations

import ipaddress

import pytest

from aria.config import Settings, load_settings
from aria.doctor import fetch_rule
from aria.errors import AddressRefused, ConfigError
from aria.netguard import AddressGuard, FetchAllow, parse_address, refusal


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.31.255.255", "private"), ("192.168.0.10", "private"), ("fd12::1", "private"),
    ("100.64.0.1", "CGNAT"), ("100.127.255.254", "CGNAT"),
    ("169.254.10.10", "link-local"), ("fe80::1", "link-local"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"), ("100.100.100.200", "cloud metadata"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("fec0::1", "site-local"),
    ("192.0.2.1", "not publicly routable"), ("198.18.0.1", "not publicly routable"),
    ("::ffff:10.0.0.1", "private address inside an IPv6"), ("::ffff:169.254.169.254", "cloud metadata"),
    ("2002:7f00:1::", "loopback address inside an IPv6"),  # 6to4 carrying 127.0.0.1
    ("64:ff9b::7f00:1", "loopback address inside an IPv6"),  # NAT64 carrying 127.0.0.1
])
def test_non_public_addresses_are_refused_with_their_kind(address: str, reason: str) -> None:
    assert reason in (refusal(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("text", "meant"), [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("0", "0.0.0.0"), ("[::1]", "::1"), ("fe80::1%eth0", "fe80::1"),
])
def test_every_spelling_of_an_address_is_read_as_that_address(text: str, meant: str) -> None:
    assert parse_address(text) == ipaddress.ip_address(meant)


@pytest.mark.parametrize("name", ["example.com", "cafe", "deadbeef.example", "1.example"])
def test_names_are_not_mistaken_for_addresses(name: str) -> None:
    assert parse_address(name) is None


def test_the_allow_setting_reads_hosts_patterns_and_networks() -> None:
    settings = load_settings(_env_file=None, fetch_allow=" NAS.home.arpa. , *.corp.example,10.0.0.0/8,127.0.0.1,")
    allow = settings.fetch_allowed
    assert allow.allows_name("nas.home.arpa") and allow.allows_name("wiki.corp.example")
    assert not allow.allows_name("corp.example") and not allow.allows_name("evilcorp.example")
    assert allow.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert allow.describe() == "nas.home.arpa, *.corp.example, 10.0.0.0/8, 127.0.0.1"


@pytest.mark.parametrize(("value", "problem"), [
    ("10.0.0.0/33", "'10.0.0.0/33' is not a valid network"),
    ("*", "'*' is not a host name, a *.suffix pattern or a CIDR"),
    ("bad host", "'bad host' is not a host name"),
])
def test_a_bad_allow_entry_is_a_config_error_naming_it(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None, fetch_allow=value)
    (line,) = error.value.problems
    assert line.startswith(f"ARIA_FETCH_ALLOW: {problem}")


class Table:
    """A resolver with a fixed table, counting look-ups."""

    def __init__(self, **names: list[str]) -> None:
        self.names = {name.replace("_", "."): addresses for name, addresses in names.items()}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.names[host]


async def test_every_resolved_address_must_pass() -> None:
    resolver = Table(shop_test=["93.184.216.34", "2606:2800:220:1::1"], split_test=["93.184.216.34", "10.0.0.5"])
    guard = AddressGuard(FetchAllow(), resolver)
    assert await guard.resolve("shop.test", 443) == ["93.184.216.34", "2606:2800:220:1::1"]
    with pytest.raises(AddressRefused, match=r"split\.test resolves to 10\.0\.0\.5, which is a private address"):
        await guard.resolve("split.test", 443)


async def test_literals_and_metadata_names_are_decided_without_a_lookup() -> None:
    resolver = Table()
    guard = AddressGuard(FetchAllow(), resolver)
    assert await guard.resolve("8.8.8.8", 80) == ["8.8.8.8"]
    with pytest.raises(AddressRefused, match="metadata name"):
        await guard.resolve("metadata.google.internal", 80)
    with pytest.raises(AddressRefused, match="loopback"):
        await guard.resolve("2130706433", 80)
    assert resolver.lookups == []


async def test_the_address_connected_to_is_the_normal_spelling_of_a_literal() -> None:
    guard = AddressGuard(FetchAllow.parse(["127.0.0.0/8"]), Table())
    assert await guard.resolve("0x7f.1", 80) == ["127.0.0.1"]


async def test_an_allowed_name_allows_what_it_resolves_to_and_a_network_only_its_addresses() -> None:
    resolver = Table(nas_home_arpa=["192.168.1.20", "fd00::20"], printer_lan=["192.168.1.30"])
    by_name = AddressGuard(FetchAllow.parse(["nas.home.arpa"]), resolver)
    assert await by_name.resolve("nas.home.arpa", 5000) == ["192.168.1.20", "fd00::20"]
    with pytest.raises(AddressRefused):
        await by_name.resolve("printer.lan", 80)
    by_network = AddressGuard(FetchAllow.parse(["192.168.1.0/24"]), resolver)
    assert await by_network.resolve("printer.lan", 80) == ["192.168.1.30"]
    with pytest.raises(AddressRefused, match="fd00::20"):
        await by_network.resolve("nas.home.arpa", 5000)  # its IPv6 address is outside the allowed network


def test_doctor_shows_the_rule_and_warns_when_metadata_is_let_through() -> None:
    plain = fetch_rule(Settings(_env_file=None))  # type: ignore[call-arg]
    assert plain.verdict == "ok"
    assert "refuse loopback, private" in plain.detail and "cloud metadata" in plain.detail
    assert plain.detail.endswith("ARIA_FETCH_ALLOW allows nothing")
    lan = fetch_rule(Settings(_env_file=None, fetch_allow=["10.0.0.0/8", "*.corp.example"]))  # type: ignore[call-arg]
    assert lan.verdict == "ok" and lan.detail.endswith("allows 10.0.0.0/8, *.corp.example")
    wide = fetch_rule(Settings(_env_file=None, fetch_allow=["169.254.0.0/16"]))  # type: ignore[call-arg]
    assert wide.verdict == "warn" and "169.254.169.254" in wide.detail
