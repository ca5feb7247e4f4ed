"""Content-addressed blobs of the model store: `blobs/sha256-<hex>`.

A blob only ever appears under its final name complete and verified: data
goes to a temporary file in the same folder, is flushed to disk, hashed, and
then renamed over the final name in one step. Two writers of the same blob
each use their own temporary file, and both renames put identical bytes in
place, so concurrent writes cannot corrupt a blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from llmcloud.engine.errors import InvalidModelFile, InvalidRequest
from llmcloud.engine.gguf import read_gguf_info
from llmcloud.engine.manifest import check_digest

logger = logging.getLogger("llmcloud.engine")

_HASH_CHUNK_BYTES = 1 << 20
_TEMP_SUFFIX = ".tmp"
_PARTIAL_SUFFIX = "-partial"


def sha256_file(path: Path) -> str:
    """Return the `sha256:<hex>` digest of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def fsync_directory(directory: Path) -> None:
    """Flush a folder's entries to disk, so that a rename in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def path(self, digest: str) -> Path:
        """Return the path of a blob, raising InvalidRequest for a malformed digest."""
        return self.directory / check_digest(digest).replace(":", "-", 1)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        """Return where an interrupted download of the blob is kept for resuming."""
        return self.path(digest).with_name(self.path(digest).name + _PARTIAL_SUFFIX)

    def temp_path(self) -> Path:
        """Return a fresh temporary name in the blobs folder; the caller creates the file."""
        return self.directory / f"incoming-{secrets.token_hex(8)}{_TEMP_SUFFIX}"

    def lock(self, digest: str) -> asyncio.Lock:
        """Return the lock that serialises downloads of one blob within this process."""
        lock = self._locks.get(digest)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[digest] = lock
        return lock

    async def write(self, digest: str, chunks: AsyncIterator[bytes]) -> None:
        """Write a blob from a stream of chunks, verifying it against `digest`.

        On a mismatch the temporary file is deleted and InvalidModelFile raised.
        """
        final = self.path(digest)
        temp = self.temp_path()
        hasher = hashlib.sha256()
        try:
            with temp.open("xb") as file:
                async for chunk in chunks:
                    hasher.update(chunk)
                    file.write(chunk)
                file.flush()
                await asyncio.to_thread(os.fsync, file.fileno())

            actual = f"sha256:{hasher.hexdigest()}"
            if actual != digest:
                raise InvalidModelFile(
                    f"blob digest mismatch: expected {digest}, but the data hashes to {actual}; "
                    "check the file and send it again"
                )
            await asyncio.to_thread(self._publish, temp, final)
        finally:
            temp.unlink(missing_ok=True)

    def commit(self, digest: str, temp: Path, *, verified: bool = False) -> None:
        """Move a finished temporary file to the blob's final name.

        The file is hashed first unless the caller passes `verified=True` after
        hashing it already. On a mismatch it is deleted and InvalidModelFile raised.
        """
        final = self.path(digest)
        try:
            if not verified:
                actual = sha256_file(temp)
                if actual != digest:
                    raise InvalidModelFile(
                        f"blob digest mismatch: expected {digest}, but the download hashes to "
                        f"{actual}; pull the model again"
                    )
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(temp, final)
        finally:
            temp.unlink(missing_ok=True)

    def write_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store a small blob, returning its digest and whether it was new."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if self.exists(digest):
            return digest, False
        temp = self.temp_path()
        try:
            with temp.open("xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            self._publish(temp, self.path(digest))
        finally:
            temp.unlink(missing_ok=True)
        return digest, True

    def import_file(self, source: Path) -> str:
        """Copy a local GGUF file in as a blob, hard-linking where possible; return its digest."""
        if not source.is_file():
            raise InvalidRequest(
                f"model file {source} not found or not a regular file; "
                "give the path of a .gguf file"
            )
        temp = self.temp_path()
        try:
            # NOTE: a hard link shares the source's inode, so editing the source file in
            # place afterwards would change the blob too. Replacing the file (as downloads
            # and package upgrades do) leaves the blob as it was.
            try:
                os.link(source, temp)
            except OSError:
                shutil.copyfile(source, temp)

            # Check and hash the linked copy, not the source, which could change meanwhile.
            read_gguf_info(temp)
            digest = sha256_file(temp)
            if not self.exists(digest):
                self.commit(digest, temp, verified=True)
            return digest
        finally:
            temp.unlink(missing_ok=True)

    def read_text(self, digest: str, max_bytes: int) -> str:
        """Read a small text blob such as a template, raising InvalidModelFile past max_bytes."""
        path = self.path(digest)
        if path.stat().st_size > max_bytes:
            raise InvalidModelFile(f"blob {digest} is larger than {max_bytes} bytes")
        return path.read_text(encoding="utf-8", errors="replace")

    def remove_unreferenced(
        self, referenced: set[str], candidates: Iterable[str], grace_seconds: float
    ) -> list[str]:
        """Delete blobs that no manifest references and return their digests.

        Blobs in `candidates` go at once. Any other unreferenced blob goes only
        once it has been in the store longer than `grace_seconds`, because a
        recent one may be an upload whose /api/create has not arrived yet.
        """
        removed = []
        now = time.time()
        candidate_set = set(candidates)
        for path in self.directory.glob("sha256-*"):
            digest = path.name.replace("-", ":", 1)
            if path.name.endswith((_PARTIAL_SUFFIX, _TEMP_SUFFIX)) or digest in referenced:
                continue
            try:
                check_digest(digest)
                age = now - path.stat().st_ctime
                if digest in candidate_set or age > grace_seconds:
                    path.unlink()
                    removed.append(digest)
            except (InvalidRequest, FileNotFoundError):
                continue
        if removed:
            logger.info("removed %s unused blobs: %s", len(removed), ", ".join(removed))
        return removed

    def _publish(self, temp: Path, final: Path) -> None:
        os.replace(temp, final)
        fsync_directory(self.directory)
