"""Start-up checks of `llmcloud engine`: they fail before the server listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.cli import app
from llmcloud.engine.server import StartupError, check_startup
from llmcloud.listen import is_loopback
from tests.conftest import engine_settings


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "example.org"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_public_host_without_token_is_refused(tmp_path: Path) -> None:
    settings = engine_settings(tmp_path, engine_host="0.0.0.0")
    with pytest.raises(StartupError, match="LLMCLOUD_ENGINE_TOKEN"):
        check_startup(settings)


def test_public_host_with_token_is_allowed(tmp_path: Path) -> None:
    check_startup(engine_settings(tmp_path, engine_host="0.0.0.0", engine_token="t0ken"))


def test_cli_refuses_public_host_without_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["engine", "--host", "0.0.0.0"],
        env={"LLMCLOUD_DATA_DIR": str(tmp_path), "LLMCLOUD_ENGINE_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "needs a Bearer token" in result.output


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_background_puts_every_thread_in_idle_class() -> None:
    code = """
import os, threading
from llmcloud.cpu import move_process_to_idle_class
def report(policies, go):
    go.wait()
    policies.append(os.sched_getscheduler(0))
policies, go = [], threading.Event()
earlier = threading.Thread(target=report, args=(policies, go))
earlier.start()
moved = move_process_to_idle_class()
go.set()
earlier.join()
later = threading.Thread(target=report, args=(policies, go))
later.start()
later.join()
print(moved, os.sched_getscheduler(0) == os.SCHED_IDLE, policies == [os.SCHED_IDLE] * 2)
"""
    # In a child process, since the class cannot be left without privileges.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["True", "True", "True"]
