"""docker-compose.yml and the Dockerfile: ports stay private, the image installs from the lock."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENGINE_PORT = "11434"
COMPOSE_ENV = {
    "LLMCLOUD_ENGINE_TOKEN": "test-engine-token",
    "LLMCLOUD_SESSION_SECRET_KEY": "ab" * 32,
    "POSTGRES_PASSWORD": "test-password",
}
# Variables that the file reads, kept out of the `config` runs unless a test sets them.
_COMPOSE_VARIABLES = {
    *COMPOSE_ENV,
    "LLMCLOUD_PRIVATE_ADDRESS",
    "LLMCLOUD_ENGINE_URL",
    "LLMCLOUD_PUBLIC_URL",
    "LLMCLOUD_IMAGE",
    "COMPOSE_PROJECT_NAME",
}
# ${NAME:-default} and ${NAME:?message}, as Compose interpolates them.
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}")


def _interpolate(text: str, environment: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if environment.get(name):
            return environment[name]
        if default is not None:
            return default
        raise AssertionError(f"compose variable {name} has no value and no default")

    return _VARIABLE.sub(replace, text)


def _compose(environment: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(_interpolate(COMPOSE_FILE.read_text(), environment))
    return document


def _published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return (host address, host port, container port) for each of the service's ports."""
    mappings = []
    for port in service.get("ports", []):
        host, host_port, container_port = str(port).rsplit(":", 2)
        mappings.append((host, host_port, container_port))
    return mappings


def test_compose_binds_ports_to_loopback_by_default() -> None:
    services = _compose(COMPOSE_ENV)["services"]

    addresses = {host for service in services.values() for host, _, _ in _published(service)}
    assert addresses == {"127.0.0.1"}


def test_compose_engine_port_follows_private_address() -> None:
    environment = {**COMPOSE_ENV, "LLMCLOUD_PRIVATE_ADDRESS": "10.0.0.5"}
    engine = _compose(environment)["services"]["engine"]

    assert _published(engine) == [("10.0.0.5", ENGINE_PORT, ENGINE_PORT)]


def test_compose_publishes_no_database_ports() -> None:
    services = _compose(COMPOSE_ENV)["services"]

    assert "ports" not in services["postgres"]
    assert "ports" not in services["redis"]


def test_compose_has_two_web_instances_on_postgres() -> None:
    services = _compose(COMPOSE_ENV)["services"]
    urls = [services[name]["environment"]["LLMCLOUD_DATABASE_URL"] for name in ("web-1", "web-2")]

    assert urls[0] == urls[1]
    assert urls[0].startswith("postgresql://llmcloud:test-password@postgres:5432/")


def test_compose_web_instances_share_redis() -> None:
    services = _compose(COMPOSE_ENV)["services"]

    for name in ("web-1", "web-2"):
        assert services[name]["environment"]["LLMCLOUD_REDIS_URL"] == "redis://redis:6379/0"


def test_compose_requires_engine_token() -> None:
    environment = {
        key: value for key, value in COMPOSE_ENV.items() if key != "LLMCLOUD_ENGINE_TOKEN"
    }

    with pytest.raises(AssertionError, match="LLMCLOUD_ENGINE_TOKEN"):
        _compose(environment)


def test_compose_has_nvidia_section_ready() -> None:
    text = COMPOSE_FILE.read_text()

    assert "#         - driver: nvidia" in text
    assert "#           capabilities: [gpu]" in text


def test_dockerfile_installs_from_lock_with_hashes() -> None:
    text = DOCKERFILE.read_text()

    assert "--require-hashes -r requirements/main.lock" in text
    assert 'ENTRYPOINT ["llmcloud"]' in text
    assert "USER llmcloud" in text


def _compose_command() -> list[str]:
    """Return the command of a Compose implementation, or skip the test naming what is missing.

    The Docker CLI plugin (`docker compose`, Compose v2) comes first. Otherwise the standalone
    `docker-compose` runs: Debian 12's package, Compose 1.29, which scripts/install-test-packages
    installs.
    """
    reasons = []
    if shutil.which("docker") is None:
        reasons.append("the docker client is not installed")
    else:
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
        reasons.append(f"the docker compose plugin is not installed: {probe.stderr.strip()}")

    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    reasons.append("docker-compose is not installed (scripts/install-test-packages installs it)")
    pytest.skip("; ".join(reasons))


def _host_address(port: str | dict[str, Any]) -> str:
    """Return the host address of a port as `config` prints it.

    Compose v2 prints the long form (a mapping with host_ip), Compose 1.29 the short form
    "127.0.0.1:11434:11434/tcp".
    """
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    parts = port.split(":")
    return parts[0] if len(parts) == 3 else ""


def _run_compose_config(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [
        *_compose_command(),
        "--project-name",
        "llmcloud",
        "-f",
        str(COMPOSE_FILE),
        "--profile",
        "engine",
        "--profile",
        "web",
        "config",
    ]
    variables = {key: value for key, value in os.environ.items() if key not in _COMPOSE_VARIABLES}
    return subprocess.run(
        command, capture_output=True, text=True, check=False, env={**variables, **environment}
    )


def test_docker_compose_config_accepts_file() -> None:
    result = _run_compose_config(COMPOSE_ENV)
    assert result.returncode == 0, result.stderr

    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"engine", "web-1", "web-2", "postgres", "redis"}
    host_addresses = {
        _host_address(port) for service in services.values() for port in service.get("ports", [])
    }
    assert host_addresses == {"127.0.0.1"}


def test_docker_compose_config_requires_engine_token() -> None:
    environment = {
        key: value for key, value in COMPOSE_ENV.items() if key != "LLMCLOUD_ENGINE_TOKEN"
    }

    result = _run_compose_config(environment)

    assert result.returncode != 0
    assert "set LLMCLOUD_ENGINE_TOKEN in .env" in result.stderr
