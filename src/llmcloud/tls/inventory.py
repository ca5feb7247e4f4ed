"""The certificates an installation uses, and where each is served, for `llmcloud certs list`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmcloud.settings import Settings
from llmcloud.tls.ca import CAPaths
from llmcloud.tls.certificates import CertificateInfo, describe, load_chain
from llmcloud.tls.errors import CertificateError
from llmcloud.tls.serving import web_certificate_files


@dataclass(frozen=True)
class InventoryEntry:
    """One certificate file, where it is used, and its facts or the error reading it."""

    path: Path
    served_at: str
    info: CertificateInfo | None = None
    error: str | None = None


def certificate_inventory(settings: Settings) -> list[InventoryEntry]:
    """List the web, engine and CA certificates, then any other certificate in `certs/`."""
    used: dict[Path, str] = {}
    try:
        web_files = web_certificate_files(settings)
    except CertificateError:
        web_files = None
    if web_files is not None:
        used[web_files.cert] = f"web app, port {settings.web_port}"
    if settings.tls_engine_cert_file is not None:
        used[settings.tls_engine_cert_file] = f"engine, port {settings.engine_port}"
    ca = CAPaths(settings.data_dir).cert
    if ca.exists():
        used.setdefault(ca, "internal CA (clients import it to trust)")
    for path in sorted((settings.data_dir / "certs").rglob("*.pem")):
        if "acme-challenges" not in path.parts:
            used.setdefault(path, "not served")
    return [_entry(path, served_at) for path, served_at in used.items()]


def _entry(path: Path, served_at: str) -> InventoryEntry:
    try:
        leaf = load_chain(path)[0]
    except CertificateError as exc:
        return InventoryEntry(path, served_at, error=exc.message)
    return InventoryEntry(path, served_at, info=describe(leaf, path))
