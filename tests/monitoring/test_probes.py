"""Probes that need their own servers: a certificate on the wire, charts with data."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from fastapi.testclient import TestClient

from llmcloud.monitoring.probes import Status, probe_certificate
from llmcloud.tls.ca import init_ca, issue_certificate


def test_certificate_probe_reads_days_left(tmp_path: Path) -> None:
    init_ca(tmp_path, 3650)
    issued = issue_certificate(tmp_path, "web", ["127.0.0.1"], lifetime_days=10)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        result = probe_certificate(f"https://127.0.0.1:{port}")
    finally:
        thread.join(5)
        listener.close()

    assert result.status == Status.WARNING
    assert result.detail.startswith("9.9 days left") or result.detail.startswith("10.0 days")


def test_charts_page_draws_recorded_samples(admin: TestClient) -> None:
    monitor = admin.app.state.monitor  # type: ignore[attr-defined]
    for _ in range(3):
        admin.get("/chats")
        monitor.sampler.take()

    page = admin.get("/admin/charts").text

    assert page.count("<polyline") >= 3
