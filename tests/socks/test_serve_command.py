"""`llmcloud socks serve` start-up errors, through the real command in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def test_serve_names_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other_program:
        port = other_program.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "llmcloud", "socks", "serve", "--port", str(port)],
            env={
                **os.environ,
                "LLMCLOUD_DATA_DIR": str(tmp_path),
                "LLMCLOUD_SOCKS_HOST": "127.0.0.1",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "pick another port with --port (setting socks_port)" in result.stderr
    assert "Traceback" not in result.stderr
