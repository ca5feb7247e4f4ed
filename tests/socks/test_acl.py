"""The destination allow list: parsing, ports, names and the always-denied ranges."""

from __future__ import annotations

import ipaddress

import pytest

from llmcloud.socks.acl import AllowList, InvalidRule, parse_rule


def allows(entries: list[str], address: str, port: int = 80, name: str | None = None) -> bool:
    return AllowList.parse(entries).allows(ipaddress.ip_address(address), port, name)


def test_empty_list_allows_nothing() -> None:
    assert not allows([], "127.0.0.2")


def test_network_rule_allows_contained_address() -> None:
    assert allows(["10.0.0.0/8"], "10.1.2.3")


def test_network_rule_denies_outside_address() -> None:
    assert not allows(["10.0.0.0/8"], "11.0.0.1")


def test_port_list_and_range() -> None:
    entries = ["10.0.0.0/8:80,8000-8999"]
    assert allows(entries, "10.0.0.1", 8500)
    assert allows(entries, "10.0.0.1", 80)
    assert not allows(entries, "10.0.0.1", 443)


def test_bracketed_ipv6_network_with_port() -> None:
    assert allows(["[fd00::/8]:443"], "fd00::1", 443)
    assert not allows(["[fd00::/8]:443"], "fd00::1", 80)


def test_bare_ipv6_network_allows_every_port() -> None:
    assert allows(["fd00::/8"], "fd12::1", 22)


def test_ipv4_mapped_address_checked_as_ipv4() -> None:
    assert allows(["10.0.0.0/8"], "::ffff:10.0.0.1")
    assert not allows(["10.0.0.0/8"], "::ffff:11.0.0.1")


def test_name_pattern_matches_subdomains_only() -> None:
    entries = ["*.internal"]
    assert allows(entries, "192.0.2.1", name="grafana.internal")
    assert allows(entries, "192.0.2.1", name="a.b.internal")
    assert not allows(entries, "192.0.2.1", name="internal")
    assert not allows(entries, "192.0.2.1", name="evilinternal")


def test_exact_name_rule() -> None:
    assert allows(["grafana.internal:3000"], "192.0.2.1", 3000, name="grafana.internal")
    assert not allows(["grafana.internal:3000"], "192.0.2.1", 3000, name="other.internal")


def test_unlisted_name_judged_by_address() -> None:
    assert not allows(["10.0.0.0/8"], "192.0.2.1", name="anything.example")
    assert allows(["10.0.0.0/8"], "10.0.0.9", name="anything.example")


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "169.254.1.1", "fe80::1", "fd00:ec2::254", "100.100.100.200"]
)
def test_metadata_and_link_local_denied_by_wide_rules(address: str) -> None:
    assert not allows(["0.0.0.0/0", "::/0"], address)


def test_metadata_denied_through_name_rule() -> None:
    assert not allows(["*.internal"], "169.254.169.254", name="metadata.internal")


def test_metadata_allowed_when_listed_explicitly() -> None:
    assert allows(["169.254.169.254/32"], "169.254.169.254")


@pytest.mark.parametrize(
    "entry",
    ["", "10.0.0.0/8:0", "10.0.0.0/8:70000", "10.0.0.0/8:90-80", "10.0.0.0/8:http", "a b", "[x]:1"],
)
def test_invalid_entry_rejected(entry: str) -> None:
    with pytest.raises(InvalidRule):
        parse_rule(entry)


def test_invalid_entry_message_names_entry() -> None:
    with pytest.raises(InvalidRule, match=r"'10\.0\.0\.0/8:http'"):
        parse_rule("10.0.0.0/8:http")
