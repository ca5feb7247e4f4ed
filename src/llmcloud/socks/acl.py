"""The destination allow list of the SOCKS proxy.

Each rule is `HOST` or `HOST:PORTS`. HOST is an address or CIDR network
(`10.0.0.0/8`, `[fd00::/8]` with brackets when ports follow) or a host name
pattern (`grafana.internal`, or `*.internal` for every name below
`internal`). PORTS is `*`, a port, a range `8000-8999`, or a comma-separated
list of these; no PORTS means every port. An empty list allows nothing.

The proxy resolves names itself and checks every destination after
resolution: an address is allowed when a network rule contains it, or when
the client asked for a name that a name rule matches. A name that no name
rule matches is judged by its resolved address alone, so a name resolving
outside the listed networks is denied. Link-local and cloud metadata
addresses are denied, even through a name rule, unless a network rule lists
them with a prefix at least as long as the denied network's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The link-local ranges (RFC 3927, RFC 4291) contain the metadata service address
# 169.254.169.254 of AWS, GCP and Azure. The single addresses are AWS's IPv6 metadata
# address and those that Alibaba Cloud and Oracle Cloud document for their metadata.
# NOTE: that list is from the providers' documentation as remembered, not re-checked.
DENIED_UNLESS_LISTED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("192.0.0.192/32"),
)
_NAME_PATTERN = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_RULE = re.compile(
    r"\[(?P<bracketed>[^\]]+)\](:(?P<bracketed_ports>.+))?"
    r"|(?P<host>[^:\[\]]+)(:(?P<ports>.+))?"
)
_ALL = ((1, 65535),)
_RULE_FORM = (
    "expected HOST or HOST:PORTS, where HOST is an address, a CIDR network such as "
    "10.0.0.0/8 (IPv6 in brackets: [fd00::/8]:443) or a name pattern such as *.internal, "
    "and PORTS is *, 443, 8000-8999 or a comma-separated list of these"
)


class InvalidRule(ValueError):
    """An allow-list entry that cannot be parsed."""


@dataclass(frozen=True)
class Rule:
    text: str
    network: IPNetwork | None
    name_pattern: str | None
    port_ranges: tuple[tuple[int, int], ...]

    def allows_port(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.port_ranges)

    def matches_name(self, name: str) -> bool:
        pattern = self.name_pattern
        if pattern is None:
            return False
        if pattern.startswith("*."):
            return name.endswith(pattern[1:])
        return name == pattern


def parse_rule(text: str) -> Rule:
    """Parse one allow-list entry; raises InvalidRule naming the entry and the expected form."""
    entry = text.strip().lower()
    with contextlib.suppress(ValueError):
        # A bare IPv6 address or network, whose colons would read as a port separator.
        return Rule(text, _unmapped_network(ipaddress.ip_network(entry, strict=False)), None, _ALL)
    match = _RULE.fullmatch(entry)
    if not entry or match is None:
        raise InvalidRule(f"invalid allow-list entry {text!r}; {_RULE_FORM}")
    host = match["bracketed"] or match["host"]
    ports_text = match["bracketed_ports"] or match["ports"] or "*"
    port_ranges = _parse_ports(ports_text, text)
    try:
        network: IPNetwork | None = ipaddress.ip_network(host, strict=False)
    except ValueError:
        network = None
    if network is not None:
        return Rule(text, _unmapped_network(network), None, port_ranges)
    if match["bracketed"] or not _NAME_PATTERN.fullmatch(host):
        raise InvalidRule(f"invalid host {host!r} in allow-list entry {text!r}; {_RULE_FORM}")
    return Rule(text, None, host.rstrip("."), port_ranges)


def _parse_ports(text: str, entry: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in text.split(","):
        part = part.strip()
        if part == "*":
            ranges.append((1, 65535))
            continue
        low_text, _, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if high_text else low
        except ValueError:
            message = f"invalid ports {part!r} in allow-list entry {entry!r}; {_RULE_FORM}"
            raise InvalidRule(message) from None
        if not 1 <= low <= high <= 65535:
            raise InvalidRule(
                f"invalid port range {part!r} in allow-list entry {entry!r}; "
                "expected ports from 1 to 65535, the lower first"
            )
        ranges.append((low, high))
    return tuple(ranges)


def _unmapped_network(network: IPNetwork) -> IPNetwork:
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        prefix = max(network.prefixlen - 96, 0)
        return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{prefix}")
    return network


def unmapped(address: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped IPv6 address, else the address itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AllowList:
    """The parsed allow list; `allows()` decides on one resolved destination."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        return cls(parse_rule(entry) for entry in entries)

    @property
    def networks(self) -> list[IPNetwork]:
        return [rule.network for rule in self.rules if rule.network is not None]

    @property
    def name_patterns(self) -> list[str]:
        return [rule.name_pattern for rule in self.rules if rule.name_pattern is not None]

    def allows(self, address: IPAddress, port: int, name: str | None = None) -> bool:
        """Decide on a connection to `address`:`port`, which `name` resolved to if given."""
        address = unmapped(address)
        if self._denied_unless_listed(address, port):
            return False
        for rule in self.rules:
            if not rule.allows_port(port):
                continue
            if rule.network is not None and address in rule.network:
                return True
            if name is not None and rule.matches_name(name):
                return True
        return False

    def _denied_unless_listed(self, address: IPAddress, port: int) -> bool:
        for denied in DENIED_UNLESS_LISTED:
            if address not in denied:
                continue
            return not any(
                rule.network is not None
                and address in rule.network
                and rule.network.prefixlen >= denied.prefixlen
                and rule.allows_port(port)
                for rule in self.rules
            )
        return False
