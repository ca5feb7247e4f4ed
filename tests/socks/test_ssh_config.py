"""`llmcloud socks ssh-config`: OpenSSH parses the block, and its comments explain its use."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.cli import app
from llmcloud.socks.ssh_config import InvalidSshValue, render_ssh_config

runner = CliRunner()


def ssh_options(config: str, alias: str, tmp_path: Path) -> dict[str, str]:
    """Return the options `ssh -G` computes for the alias from the config text."""
    path = tmp_path / "ssh_config"
    path.write_text(config)
    result = subprocess.run(
        ["ssh", "-G", "-F", str(path), alias], capture_output=True, text=True, check=True
    )
    options: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        options.setdefault(key, value)
    return options


@pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh is missing (openssh-client)")
def test_block_parsed_by_openssh(tmp_path: Path) -> None:
    config = render_ssh_config("jump.example.org", "alice", local_port=1081)
    options = ssh_options(config, "jump.example.org-socks", tmp_path)
    assert options["hostname"] == "jump.example.org"
    assert options["user"] == "alice"
    assert options["dynamicforward"] == "[127.0.0.1]:1081"
    assert options["serveraliveinterval"] == "30"
    assert options["identityfile"].endswith(".ssh/id_ed25519")
    assert options["exitonforwardfailure"] == "yes"


def test_command_prints_block_and_advice() -> None:
    result = runner.invoke(app, ["socks", "ssh-config", "--host", "jump", "--user", "alice"])
    assert result.exit_code == 0
    assert "DynamicForward 127.0.0.1:1080" in result.stdout
    assert "keep that SSH session open" in result.stdout


@pytest.mark.parametrize("host", ["jump host", "jump\nProxyCommand evil", ""])
def test_bad_host_rejected(host: str) -> None:
    with pytest.raises(InvalidSshValue):
        render_ssh_config(host, "alice")


def test_command_rejects_bad_user() -> None:
    result = runner.invoke(app, ["socks", "ssh-config", "--host", "jump", "--user", "a;b c"])
    assert result.exit_code == 2
    assert "invalid user 'a;b c'" in result.stderr
