"""`llmcloud certs ...` and `llmcloud nginx-config`."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.cli import app
from llmcloud.tls.ca import CAPaths

runner = CliRunner()


def invoke(data_dir: Path, *args: str, **settings: str) -> tuple[int, str, str]:
    env = {"LLMCLOUD_DATA_DIR": str(data_dir)}
    env.update({f"LLMCLOUD_{name.upper()}": value for name, value in settings.items()})
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_certs_init_ca_creates_private_key(data_dir: Path) -> None:
    code, output, _ = invoke(data_dir, "certs", "init-ca")
    assert code == 0
    assert "Created the internal CA" in output
    assert stat.S_IMODE(CAPaths(data_dir).key.stat().st_mode) == 0o600


def test_certs_init_ca_twice_fails(data_dir: Path) -> None:
    invoke(data_dir, "certs", "init-ca")
    code, _, errors = invoke(data_dir, "certs", "init-ca")
    assert code == 2
    assert "already exists" in errors


def test_certs_issue_writes_pair(data_dir: Path) -> None:
    invoke(data_dir, "certs", "init-ca")
    code, output, _ = invoke(
        data_dir, "certs", "issue", "web", "--san", "chat.internal", "--san", "10.0.0.5"
    )
    assert code == 0
    assert str(data_dir / "certs" / "web.pem") in output
    assert (data_dir / "secrets" / "web-key.pem").exists()


def test_certs_issue_without_ca_fails(data_dir: Path) -> None:
    code, _, errors = invoke(data_dir, "certs", "issue", "web", "--san", "chat.internal")
    assert code == 2
    assert "llmcloud certs init-ca" in errors


def test_certs_export_ca_prints_pem(data_dir: Path) -> None:
    invoke(data_dir, "certs", "init-ca")
    code, output, _ = invoke(data_dir, "certs", "export-ca")
    assert code == 0
    assert output == CAPaths(data_dir).cert.read_text()


def test_certs_list_shows_served_certificate(data_dir: Path) -> None:
    invoke(data_dir, "certs", "init-ca")
    invoke(data_dir, "certs", "issue", "web", "--san", "chat.internal", "--days", "10")
    cert = str(data_dir / "certs" / "web.pem")
    key = str(data_dir / "secrets" / "web-key.pem")
    code, output, _ = invoke(
        data_dir, "certs", "list", tls_cert_file=cert, tls_key_file=key, web_port="8443"
    )
    web_line = next(line for line in output.splitlines() if line.startswith(cert))
    assert code == 0
    assert "CN=chat.internal" in web_line
    assert "CN=llmcloud internal CA" in web_line
    assert "web app, port 8443" in web_line
    assert " 10 " in web_line


def test_certs_list_reports_unreadable_file(data_dir: Path) -> None:
    broken = data_dir / "certs" / "broken.pem"
    broken.parent.mkdir(parents=True)
    broken.write_text("not a certificate")
    code, output, _ = invoke(data_dir, "certs", "list")
    assert code == 0
    assert "is not a PEM certificate" in output


def test_nginx_config_uses_acme_paths(data_dir: Path) -> None:
    code, output, _ = invoke(
        data_dir,
        "nginx-config",
        "--upstream",
        "10.0.0.2:8080",
        "--upstream",
        "10.0.0.3:8080",
        tls_acme_domains='["chat.example.org"]',
    )
    assert code == 0
    assert f"ssl_certificate {data_dir}/certs/acme/chat.example.org.pem;" in output
    assert "server 10.0.0.2:8080;" in output
    assert "server 10.0.0.3:8080;" in output
    assert "server_name chat.example.org;" in output


def test_nginx_config_rejects_injected_value(data_dir: Path) -> None:
    code, _, errors = invoke(
        data_dir,
        "nginx-config",
        "--server-name",
        "a; include /etc/passwd",
        "--cert",
        "/c.pem",
        "--key",
        "/k.pem",
    )
    assert code == 2
    assert "invalid value 'a; include /etc/passwd'" in errors


def test_nginx_config_needs_certificate(data_dir: Path) -> None:
    code, _, errors = invoke(data_dir, "nginx-config", "--server-name", "chat.example.org")
    assert code == 2
    assert "give --cert and --key" in errors


def test_nginx_config_output_passes_nginx_check(data_dir: Path, tmp_path: Path) -> None:
    if subprocess.run(["which", "nginx"], capture_output=True, check=False).returncode:
        pytest.skip("Debian package nginx is not installed (scripts/install-test-packages)")
    from tests.tls.test_nginx import nginx_command, nginx_main_config

    invoke(data_dir, "certs", "init-ca")
    invoke(data_dir, "certs", "issue", "web", "--san", "chat.example.org")
    code, output, _ = invoke(
        data_dir,
        "nginx-config",
        "--server-name",
        "chat.example.org",
        "--cert",
        str(data_dir / "certs" / "web.pem"),
        "--key",
        str(data_dir / "secrets" / "web-key.pem"),
        "--https-listen",
        "127.0.0.1:1443",
        "--http-listen",
        "127.0.0.1:1080",
    )
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "site.conf").write_text(output)
    (prefix / "nginx.conf").write_text(nginx_main_config(prefix, prefix / "site.conf"))
    check = subprocess.run(nginx_command(prefix, "-t"), capture_output=True, text=True, check=False)
    assert code == 0
    assert check.returncode == 0, check.stderr


def test_certs_export_ca_unwritable_output_fails(data_dir: Path) -> None:
    invoke(data_dir, "certs", "init-ca")
    target = data_dir / "missing-dir" / "ca.pem"

    code, _, errors = invoke(data_dir, "certs", "export-ca", "-o", str(target))

    assert code == 1
    assert f"cannot write the CA certificate to {target}" in errors
    assert "No such file or directory" in errors
