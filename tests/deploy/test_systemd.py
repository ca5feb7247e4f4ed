"""The systemd units that `llmcloud systemd-units` writes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.cli import app
from llmcloud.deploy.systemd import UnitOptionError, UnitOptions, render_units, unit_names

LLMCLOUD = Path(sys.executable).with_name("llmcloud")


def _directives(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("name", unit_names())
def test_unit_is_hardened(name: str) -> None:
    directives = _directives(render_units(UnitOptions())[name])

    assert directives["User"] == ["llmcloud"]
    assert directives["NoNewPrivileges"] == ["yes"]
    assert directives["ProtectSystem"] == ["strict"]
    assert directives["ReadWritePaths"] == ["/var/lib/llmcloud"]
    assert directives["Restart"] == ["on-failure"]
    assert directives["CapabilityBoundingSet"] == [""]


def test_units_start_each_part() -> None:
    units = render_units(UnitOptions())
    commands = {name: _directives(text)["ExecStart"][0] for name, text in units.items()}

    assert commands["llmcloud-engine.service"] == "/opt/llmcloud/.venv/bin/llmcloud engine"
    assert commands["llmcloud-web.service"] == "/opt/llmcloud/.venv/bin/llmcloud web"
    assert commands["llmcloud-web@.service"] == "/opt/llmcloud/.venv/bin/llmcloud web --port %i"
    assert commands["llmcloud-socks.service"] == "/opt/llmcloud/.venv/bin/llmcloud socks"
    assert commands["llmcloud-up.service"] == "/opt/llmcloud/.venv/bin/llmcloud up"


def test_engine_unit_keeps_devices_for_gpu() -> None:
    units = render_units(UnitOptions())

    assert _directives(units["llmcloud-engine.service"])["PrivateDevices"] == ["no"]
    assert _directives(units["llmcloud-web.service"])["PrivateDevices"] == ["yes"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "Root User"),
        ("executable", Path("bin/llmcloud")),
        ("env_file", Path("/etc/llm cloud.env")),
        ("data_dir", Path("data")),
    ],
)
def test_unit_options_reject_bad_value(field: str, value: object) -> None:
    with pytest.raises(UnitOptionError, match="invalid"):
        UnitOptions(**{field: value})  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["systemd-units", "--output-dir", str(tmp_path), "--executable", str(LLMCLOUD)]
    )
    assert result.exit_code == 0, result.output

    files = sorted(str(path) for path in tmp_path.glob("*.service"))
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *files],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert len(files) == len(unit_names())
    assert verify.returncode == 0, verify.stderr
    assert "Unknown" not in verify.stderr


def test_systemd_units_command_rejects_relative_executable(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["systemd-units", "--output-dir", str(tmp_path), "--executable", "llmcloud"]
    )

    assert result.exit_code == 2
    assert "invalid executable path 'llmcloud'" in result.output
    assert list(tmp_path.iterdir()) == []
