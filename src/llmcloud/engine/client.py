"""An HTTP client for a running engine, speaking Ollama's API as Ollama's own CLI does.

Streaming calls (`pull`, `create`, `chat`) return iterators of the NDJSON
objects the engine sends. Each iterator keeps the HTTP connection open until
it is exhausted or closed, so a caller that stops early must close it (for
example with `contextlib.closing`). Closing the connection is also how a
generation is cancelled: the engine stops decoding when the client hangs up.

Every failure is raised as an `EngineClientError` carrying the engine's own
`{"error": ...}` message and the HTTP status where there is one. A streaming
call raises an HTTP error status when it is called, and an error line that
the engine sends after the stream started while it is iterated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

DEFAULT_TIMEOUT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 5.0
_FILE_CHUNK_BYTES = 1 << 20

Progress = Callable[[int], None]
# The NDJSON objects of a streaming response; closing the generator closes the connection.
Stream = Generator[dict[str, Any], None, None]


class EngineClientError(Exception):
    """A request to the engine failed; `status_code` is the HTTP status, or None."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class EngineUnreachable(EngineClientError):
    """Nothing accepted a connection at the engine URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no engine is running at {url} ({reason})")
        self.url = url


class EngineHTTPError(EngineClientError):
    """The engine responded with an HTTP error status."""


class ModelNotFoundError(EngineHTTPError):
    """The engine responded with 404 Not Found for a model."""


class EngineStreamError(EngineClientError):
    """A stream ended with an `{"error": ...}` line or a broken connection."""


class EngineClient:
    """A synchronous client for one engine at `url`, with an optional Bearer token."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"User-Agent": "llmcloud-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Plain requests

    def version(self) -> str:
        return str(self._request("GET", "/api/version").get("version", ""))

    def list_models(self) -> list[dict[str, Any]]:
        """Return the models in the engine's store (GET /api/tags)."""
        return list(self._request("GET", "/api/tags").get("models") or [])

    def running_models(self) -> list[dict[str, Any]]:
        """Return the models loaded in memory (GET /api/ps)."""
        return list(self._request("GET", "/api/ps").get("models") or [])

    def show(self, model: str) -> dict[str, Any]:
        """Return a model's details, parameters, template, license and Modelfile."""
        return self._request("POST", "/api/show", {"model": model})

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", {"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", {"model": model})

    def unload(self, model: str) -> None:
        """Unload a model from memory, as a generate request with keep_alive 0 does."""
        self._request("POST", "/api/generate", {"model": model, "keep_alive": 0})

    # Streams

    def pull(self, model: str, *, source: str | None = None, insecure: bool = False) -> Stream:
        """Pull a model and yield the progress objects (`status`, `digest`, `total`, `completed`).

        Without `source` the engine downloads `model` from its registry. With
        `source`, an http(s) URL of a GGUF file or a path of one on the
        engine's machine, the engine fetches that file and stores it as `model`.
        """
        body: dict[str, Any] = {"model": model, "insecure": insecure, "stream": True}
        if source is not None:
            body["from"] = source
        return self._stream("POST", "/api/pull", body, timeout=None)

    def create(
        self,
        model: str,
        *,
        from_: str | None = None,
        files: Mapping[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        license: str | list[str] | None = None,
    ) -> Stream:
        """Create a model (POST /api/create) and yield the engine's status objects."""
        body: dict[str, Any] = {"model": model, "stream": True}
        optional = {
            "from": from_,
            "files": dict(files) if files is not None else None,
            "template": template,
            "system": system,
            "parameters": dict(parameters) if parameters is not None else None,
            "license": license,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return self._stream("POST", "/api/create", body, timeout=None)

    def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | None = None,
    ) -> Stream:
        """Stream a chat response: yields Ollama's chunks, the last one with `done: true`."""
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        if options:
            body["options"] = dict(options)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self._stream("POST", "/api/chat", body, timeout=None)

    # Blobs

    def blob_exists(self, digest: str) -> bool:
        """Return whether the engine has a blob (HEAD /api/blobs/<digest>)."""
        response = self._send("HEAD", f"/api/blobs/{digest}", timeout=self.timeout)
        if response.status_code == 404:
            return False
        _raise_for_status(response, digest)
        return True

    def upload_blob(self, path: Path, digest: str, progress: Progress | None = None) -> None:
        """Upload a file as the blob `digest` (POST /api/blobs/<digest>) unless it is there.

        `progress` receives the number of bytes sent so far.
        """
        if self.blob_exists(digest):
            if progress is not None:
                progress(path.stat().st_size)
            return
        size = path.stat().st_size
        response = self._send(
            "POST",
            f"/api/blobs/{digest}",
            content=_read_chunks(path, progress),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            timeout=None,
        )
        _raise_for_status(response, digest)

    # Internals

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._send(method, path, json_body=body, timeout=self.timeout)
        _raise_for_status(response, _model_of(body))
        if not response.content:
            return {}
        data = _decode_json(response.content, path)
        return data if isinstance(data, dict) else {}

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None,
    ) -> httpx.Response:
        request = self._build(method, path, json_body, content, headers, timeout)
        try:
            return self._http.send(request)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def _stream(self, method: str, path: str, body: Any, *, timeout: float | None) -> Stream:
        request = self._build(method, path, body, None, None, timeout)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.is_error:
            try:
                response.read()
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from None
            finally:
                response.close()
            _raise_for_status(response, _model_of(body))
        return self._iterate_lines(response)

    def _iterate_lines(self, response: httpx.Response) -> Stream:
        try:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                data = _decode_json(line.encode(), response.request.url.path)
                if isinstance(data, dict) and "error" in data:
                    raise EngineStreamError(str(data["error"]))
                if isinstance(data, dict):
                    yield data
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        finally:
            response.close()

    def _build(
        self,
        method: str,
        path: str,
        json_body: Any,
        content: Iterator[bytes] | None,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> httpx.Request:
        limits = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS)
        if json_body is not None:
            content_bytes = json.dumps(json_body, ensure_ascii=False).encode()
            headers = {**(headers or {}), "Content-Type": "application/json"}
            return self._http.build_request(
                method, path, content=content_bytes, headers=headers, timeout=limits
            )
        return self._http.build_request(
            method, path, content=content, headers=headers, timeout=limits
        )

    def _transport_error(self, exc: httpx.TransportError) -> EngineClientError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return EngineUnreachable(self.url, str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.TimeoutException):
            return EngineClientError(f"request to the engine at {self.url} timed out: {exc}")
        return EngineClientError(f"connection to the engine at {self.url} failed: {exc}")


def sha256_digest(path: Path, progress: Progress | None = None) -> str:
    """Return a file's `sha256:<hex>` digest; `progress` receives the bytes hashed so far."""
    digest = hashlib.sha256()
    for chunk in _read_chunks(path, progress):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _read_chunks(path: Path, progress: Progress | None) -> Iterator[bytes]:
    done = 0
    with path.open("rb") as file:
        while chunk := file.read(_FILE_CHUNK_BYTES):
            done += len(chunk)
            yield chunk
            if progress is not None:
                progress(done)


def _decode_json(data: bytes, path: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineClientError(f"the engine sent invalid JSON for {path}: {exc}") from None


def _model_of(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("model") or body.get("source") or "")
    return ""


def _raise_for_status(response: httpx.Response, subject: str) -> None:
    if not response.is_error:
        return
    message = _error_message(response)
    status = response.status_code
    if status == 401:
        message += "; set the engine's token in LLMCLOUD_ENGINE_TOKEN (setting engine_token)"
        raise EngineHTTPError(message, status)
    if status == 404 and subject and "/api/blobs/" not in response.request.url.path:
        raise ModelNotFoundError(message, status)
    raise EngineHTTPError(message, status)


def _error_message(response: httpx.Response) -> str:
    """Return the `error` of an Ollama or OpenAI error body, or a description of the status."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error:
            return error
    text = response.text.strip()
    reason = response.reason_phrase or "error"
    detail = f": {text[:200]}" if text else ""
    return f"the engine responded with {response.status_code} {reason}{detail}"
