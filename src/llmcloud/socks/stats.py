"""Counters of the SOCKS proxy, kept for the audit log and for a metrics exporter to read."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

audit_log = logging.getLogger("llmcloud.audit")


@dataclass
class SocksStats:
    """Totals since the proxy started. Outcome names are fixed strings, never user input.

    NOTE: the byte totals grow when a connection closes, so a long tunnel's bytes
    appear only at its end.
    """

    connections: Counter[str] = field(default_factory=Counter)
    bytes_to_destination: int = 0
    bytes_to_client: int = 0
    denied_destinations: int = 0
    failed_logins: int = 0
    open_connections: int = 0
    open_tunnels: int = 0


@dataclass
class TunnelRecord:
    """One client connection, from accept to close, as the audit log reports it."""

    client: str
    user: str | None = None
    destination: str | None = None
    outcome: str = "closed_in_handshake"
    bytes_to_destination: int = 0
    bytes_to_client: int = 0
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)

    def finish(self, stats: SocksStats) -> None:
        """Add the record to the totals and write its audit line."""
        stats.connections[self.outcome] += 1
        stats.bytes_to_destination += self.bytes_to_destination
        stats.bytes_to_client += self.bytes_to_client
        if self.outcome == "denied":
            stats.denied_destinations += 1
        if self.outcome == "login_failed":
            stats.failed_logins += 1
        if self.user is None:
            # Clients that never sent a login are only counted, because a flood of
            # scanners or half-open connections would otherwise flood the audit log.
            return
        audit_log.info(
            "socks user=%s client=%s destination=%s outcome=%s bytes_to_destination=%d "
            "bytes_to_client=%d duration=%.3fs",
            self.user or "-",
            self.client,
            self.destination or "-",
            self.outcome,
            self.bytes_to_destination,
            self.bytes_to_client,
            time.monotonic() - self.started,
        )
