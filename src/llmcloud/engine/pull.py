"""Pull models into the store from a registry, an http(s) URL or a local file.

Registry pulls follow the OCI distribution API that Ollama's registry speaks:
the manifest from `/v2/<namespace>/<model>/manifests/<tag>`, then each blob
the store lacks from `/v2/<namespace>/<model>/blobs/<digest>`. A blob
download is kept as `blobs/sha256-<hex>-partial` and continued with a Range
request next time. Every blob is checked against its digest, and the model
blob must be GGUF, before it gets its final name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import httpx

from llmcloud import __version__
from llmcloud.engine.blobs import sha256_file
from llmcloud.engine.errors import (
    EngineError,
    InvalidModelFile,
    InvalidRequest,
    ModelNotFound,
    PullError,
)
from llmcloud.engine.gguf import read_gguf_info
from llmcloud.engine.manifest import (
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_MODEL,
    Layer,
    parse_manifest,
)
from llmcloud.engine.names import DEFAULT_HOST, ModelName, parse_model_name
from llmcloud.engine.store import ModelStore

logger = logging.getLogger("llmcloud.engine")

PROGRESS_INTERVAL_SECONDS = 0.2
_TIMEOUT = httpx.Timeout(60.0, connect=15.0)


@dataclass(frozen=True)
class PullProgress:
    """One progress object of Ollama's /api/pull stream."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status}
        for key in ("digest", "total", "completed"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


@dataclass(frozen=True)
class PullSource:
    """The origin of a pull (a registry model, a URL or a file) and the name to save it as."""

    kind: Literal["registry", "url", "file"]
    location: str
    name: ModelName


def resolve_source(source: str, name: str | None = None) -> PullSource:
    """Classify and check a pull source, raising InvalidRequest for a bad name, URL or path.

    An http(s) URL is a GGUF download. A source that starts with `/`, `./`,
    `../` or `~`, or that ends in `.gguf`, is a local file. Anything else is a
    model name in a registry. Files and URLs are saved as the file name's
    stem, lowercased, with the tag `latest`, unless `name` is given.
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidRequest("pull source is required: a model name, a GGUF URL or a file path")
    chosen = parse_model_name(name) if name else None

    if source.startswith(("http://", "https://")):
        try:
            url = httpx.URL(source)
        except httpx.InvalidURL as exc:
            raise InvalidRequest(f"invalid URL {source!r}: {exc}") from None
        if not url.host:
            raise InvalidRequest(f"invalid URL {source!r}: expected http(s)://host/path/file.gguf")
        filename = unquote(url.path.rsplit("/", 1)[-1])
        return PullSource("url", source, chosen or _name_from_filename(filename, source))

    if source.startswith(("/", "./", "../", "~")) or source.lower().endswith(".gguf"):
        path = Path(source).expanduser()
        return PullSource("file", str(path), chosen or _name_from_filename(path.name, source))

    return PullSource("registry", source, chosen or parse_model_name(source))


def _name_from_filename(filename: str, source: str) -> ModelName:
    stem = filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    try:
        return parse_model_name(f"{stem.lower()}:latest")
    except InvalidRequest as exc:
        raise InvalidRequest(
            f"cannot name the model after {source!r} ({exc.message}); give a model name as well"
        ) from None


async def pull_model(
    store: ModelStore,
    source: str,
    *,
    registry: str,
    name: str | None = None,
    insecure: bool = False,
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[PullProgress]:
    """Pull a model, yielding Ollama's progress objects and ending with "success".

    `registry` is the base URL for names without a host. A name with a host
    is fetched from that host over https, or over http when `insecure` is set.
    Raises EngineError subclasses: ModelNotFound, InvalidModelFile, PullError.
    """
    target = resolve_source(source, name)
    own_client = client is None
    http = client or httpx.AsyncClient(
        timeout=_TIMEOUT, headers={"User-Agent": f"llmcloud/{__version__}"}
    )
    try:
        if target.kind == "registry":
            base = _registry_base(parse_model_name(target.location), registry, insecure)
            steps = _pull_from_registry(store, http, base, target)
        elif target.kind == "url":
            steps = _pull_from_url(store, http, target)
        else:
            steps = _pull_from_file(store, target)
        async for progress in steps:
            yield progress
    finally:
        if own_client:
            await http.aclose()
    logger.info("pulled model %s from %s", target.name, target.location)


def _registry_base(name: ModelName, registry: str, insecure: bool) -> str:
    if name.host == DEFAULT_HOST:
        return registry.rstrip("/")
    return f"{'http' if insecure else 'https'}://{name.host}"


async def _pull_from_registry(
    store: ModelStore, http: httpx.AsyncClient, base: str, target: PullSource
) -> AsyncIterator[PullProgress]:
    source_name = parse_model_name(target.location)
    repository = f"{base}/v2/{source_name.namespace}/{source_name.model}"
    yield PullProgress("pulling manifest")
    manifest_url = f"{repository}/manifests/{source_name.tag}"
    data = await _fetch_manifest(http, manifest_url, source_name)
    manifest = parse_manifest(data, manifest_url)
    if manifest.layer(MEDIA_TYPE_MODEL) is None:
        raise InvalidModelFile(f"manifest from {manifest_url} has no model layer")

    for layer in (*manifest.layers, manifest.config):
        async for progress in _download_blob(
            store, http, f"{repository}/blobs/{layer.digest}", layer
        ):
            yield progress

    yield PullProgress("verifying sha256 digest")
    yield PullProgress("writing manifest")
    await asyncio.to_thread(store.save_manifest, target.name, data)
    yield PullProgress("success")


async def _fetch_manifest(http: httpx.AsyncClient, url: str, name: ModelName) -> bytes:
    headers = {"Accept": MEDIA_TYPE_MANIFEST}
    try:
        async with http.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code == 404:
                raise ModelNotFound(
                    name.display, hint=f"the registry has no manifest at {url}; check name and tag"
                )
            _check_status(response, url)
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > MAX_MANIFEST_BYTES:
                    raise PullError(f"manifest at {url} is over {MAX_MANIFEST_BYTES} bytes")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise _network_error(url, exc) from None


async def _download_blob(
    store: ModelStore, http: httpx.AsyncClient, url: str, layer: Layer
) -> AsyncIterator[PullProgress]:
    status = f"pulling {layer.digest.removeprefix('sha256:')[:12]}"
    if store.has_blob(layer.digest):
        yield PullProgress(status, layer.digest, layer.size, layer.size)
        return

    # One download per blob at a time in this process. Another process writing the same
    # partial file could garble it, but the digest check before the rename catches that.
    async with store.blobs.lock(layer.digest):
        if not store.has_blob(layer.digest):
            partial = store.blobs.partial_path(layer.digest)
            async for progress in _fetch_into(http, url, layer, partial, status):
                yield progress
            await asyncio.to_thread(_commit_blob, store, layer, partial, url)
    yield PullProgress(status, layer.digest, layer.size, layer.size)


async def _fetch_into(
    http: httpx.AsyncClient, url: str, layer: Layer, partial: Path, status: str
) -> AsyncIterator[PullProgress]:
    offset = await asyncio.to_thread(_resume_offset, partial, layer.size)
    yield PullProgress(status, layer.digest, layer.size, offset)
    if offset == layer.size:
        return

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    last_report = time.monotonic()
    try:
        async with http.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code == 416:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise PullError(
                    f"{url} rejected resuming at byte {offset} (HTTP 416); pull again to start over"
                )
            _check_status(response, url)
            if response.status_code != 206 or not _range_starts_at(response, offset):
                offset = 0  # The server sent the whole blob, so start over.
            with partial.open("ab" if offset else "wb") as file:
                async for chunk in response.aiter_bytes():
                    offset += len(chunk)
                    if offset > layer.size:
                        file.close()
                        await asyncio.to_thread(partial.unlink, missing_ok=True)
                        raise InvalidModelFile(
                            f"blob {layer.digest} from {url} is larger than the {layer.size} "
                            "bytes its manifest states"
                        )
                    file.write(chunk)
                    if time.monotonic() - last_report >= PROGRESS_INTERVAL_SECONDS:
                        last_report = time.monotonic()
                        yield PullProgress(status, layer.digest, layer.size, offset)
    except httpx.HTTPError as exc:
        raise _network_error(url, exc, resumable=True) from None
    if offset != layer.size:
        raise PullError(
            f"download of {url} ended after {offset} of {layer.size} bytes; pull again to resume"
        )


def _range_starts_at(response: httpx.Response, offset: int) -> bool:
    content_range = str(response.headers.get("content-range", ""))
    return content_range.startswith(f"bytes {offset}-")


def _resume_offset(partial: Path, size: int) -> int:
    """Return how many bytes of a blob an earlier download left, or 0 to start over."""
    try:
        offset = partial.stat().st_size
    except FileNotFoundError:
        return 0
    return offset if offset <= size else 0


def _local_file_size(path: Path) -> int:
    if not path.is_file():
        raise InvalidRequest(f"model file {path} not found; give the path of a .gguf file")
    return path.stat().st_size


def _commit_blob(store: ModelStore, layer: Layer, partial: Path, url: str) -> None:
    """Check a finished download's digest, and for the model layer its GGUF header, then keep it."""
    actual = sha256_file(partial)
    if actual != layer.digest:
        partial.unlink(missing_ok=True)
        raise InvalidModelFile(
            f"blob from {url} hashes to {actual}, not {layer.digest} (digest mismatch); "
            "pull again, and check the registry if this repeats"
        )
    if layer.media_type == MEDIA_TYPE_MODEL:
        try:
            read_gguf_info(partial)
        except InvalidModelFile as exc:
            partial.unlink(missing_ok=True)
            reason = exc.message.split(f"{partial}: ", 1)[-1]
            raise InvalidModelFile(
                f"model blob from {url} is not a valid GGUF file: {reason}"
            ) from None
    store.blobs.commit(layer.digest, partial, verified=True)


async def _pull_from_url(
    store: ModelStore, http: httpx.AsyncClient, target: PullSource
) -> AsyncIterator[PullProgress]:
    url = target.location
    status = f"pulling {unquote(httpx.URL(url).path.rsplit('/', 1)[-1])}"
    temp = store.blobs.temp_path()
    hasher = hashlib.sha256()
    completed, last_report = 0, time.monotonic()
    try:
        try:
            async with http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code == 404:
                    raise ModelNotFound(
                        url, hint="the server responded with HTTP 404; check the URL"
                    )
                _check_status(response, url)
                total = _content_length(response)
                yield PullProgress(status, total=total, completed=0)
                with temp.open("xb") as file:
                    async for chunk in response.aiter_bytes():
                        hasher.update(chunk)
                        file.write(chunk)
                        completed += len(chunk)
                        if time.monotonic() - last_report >= PROGRESS_INTERVAL_SECONDS:
                            last_report = time.monotonic()
                            yield PullProgress(status, total=total, completed=completed)
        except httpx.HTTPError as exc:
            raise _network_error(url, exc) from None
        yield PullProgress(status, total=completed, completed=completed)

        yield PullProgress("verifying sha256 digest")
        digest = f"sha256:{hasher.hexdigest()}"
        await asyncio.to_thread(read_gguf_info, temp)
        await asyncio.to_thread(store.blobs.commit, digest, temp, verified=True)
    finally:
        temp.unlink(missing_ok=True)

    async for progress in _save_gguf_model(store, target.name, digest):
        yield progress


async def _pull_from_file(store: ModelStore, target: PullSource) -> AsyncIterator[PullProgress]:
    path = Path(target.location)
    size = await asyncio.to_thread(_local_file_size, path)
    yield PullProgress(f"pulling {path.name}", total=size, completed=0)
    digest = await asyncio.to_thread(store.import_file, path)
    yield PullProgress(f"pulling {path.name}", digest, size, size)
    yield PullProgress("verifying sha256 digest")
    async for progress in _save_gguf_model(store, target.name, digest):
        yield progress


async def _save_gguf_model(
    store: ModelStore, name: ModelName, digest: str
) -> AsyncIterator[PullProgress]:
    yield PullProgress("writing manifest")
    await asyncio.to_thread(store.create, name, files={"model.gguf": digest})
    yield PullProgress("success")


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _check_status(response: httpx.Response, url: str) -> None:
    if response.status_code not in (200, 206):
        raise PullError(
            f"download of {url} failed with HTTP {response.status_code}; check the address "
            "and the registry setting (engine_registry), then try again"
        )


def _network_error(url: str, exc: httpx.HTTPError, *, resumable: bool = False) -> EngineError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    advice = "pull again to resume" if resumable else "check the network and the address"
    return PullError(f"download of {url} failed ({detail}); {advice}")
