"""The backup archive: a zstd-compressed tar, encrypted with age, written and read as streams.

Writing runs tar and zstd in a thread that feeds a child process running age
(`agestream`), while this thread hashes its output into the archive file;
reading runs the same steps backwards. age runs in a process of its own
because pyrage holds the GIL while it works, which would stall tar, zstd and
hashing. Each file's sha256 and size are computed on the way, so no file is
read twice. The result decrypts with the standard tools:
`age -d -i backup.age data.tar.zst.age | tar --zstd -x`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pyrage  # type: ignore[import-untyped]
import zstandard
from pyrage import x25519

from llmcloud.backup import agestream
from llmcloud.backup.errors import BackupError, IntegrityError, WrongKey

PIPE_BUFFER_BYTES = 1024 * 1024
COPY_CHUNK_BYTES = 1024 * 1024
# tarfile reads streams in 10 KiB blocks by default, which costs many calls per GB.
TAR_BUFFER_BYTES = 1024 * 1024
# Chunks read ahead of the thread that hashes and writes an extracted file.
QUEUED_CHUNKS = 4

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    size: int


class HashingWriter:
    """A file-like sink that hashes and counts what passes through to `target`."""

    def __init__(self, target: IO[bytes], progress: Progress | None = None) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.progress is not None:
            self.progress(len(data))
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


class HashingReader:
    def __init__(self, source: IO[bytes], progress: Progress | None) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        self.size += len(data)
        if self.progress is not None:
            self.progress(len(data))
        return data


def write_archive(
    entries: Iterable[tuple[str, Path]],
    output: Path,
    recipients: list[x25519.Recipient],
    *,
    level: int = 3,
    progress: Progress | None = None,
) -> tuple[list[FileRecord], FileRecord]:
    """Write `(name in archive, source file)` pairs into an encrypted archive at `output`.

    Returns the record of every file and the record of the archive itself.
    The output is fsynced before this returns.
    """
    records: list[FileRecord] = []

    def produce(sink: IO[bytes]) -> None:
        compressor = zstandard.ZstdCompressor(level=level, threads=-1)
        with compressor.stream_writer(sink, closefd=False) as compressed:
            tar = TarWriter(compressed)
            for name, source in entries:
                records.append(tar.add_file(name, source, progress))
            tar.close()

    with open(output, "wb") as handle:
        sink = HashingWriter(handle)
        arguments = ["encrypt", *(str(recipient) for recipient in recipients)]
        _run_age(arguments, None, produce, lambda source: _copy(source, sink), output.name)
        handle.flush()
        os.fsync(handle.fileno())
    return records, FileRecord(output.name, sink.digest.hexdigest(), sink.size)


class TarWriter:
    """A tar stream in PAX format, written straight into `sink`, of plain files only.

    tarfile's own stream appends each 16 KiB piece of file data to a bytes
    buffer that is copied whole on every append. That cost 2.5 s of CPU per GB
    on the test machine, so the data goes straight to `sink` here, while
    tarfile still builds the headers.
    """

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.offset = 0

    def add_file(self, name: str, source: Path, progress: Progress | None) -> FileRecord:
        """Append `source` as `name`, hashing it on the way; returns its record."""
        with open(source, "rb") as handle:
            status = os.fstat(handle.fileno())
            info = tarfile.TarInfo(name)
            info.size = status.st_size
            info.mtime = status.st_mtime
            info.mode = status.st_mode & 0o7777
            self._write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))

            reader = HashingReader(handle, progress)
            remaining = info.size
            while remaining > 0:
                chunk = reader.read(min(COPY_CHUNK_BYTES, remaining))
                if not chunk:
                    raise IntegrityError(
                        f"{source} changed size while it was archived; run the backup again"
                    )
                self._write(chunk)
                remaining -= len(chunk)

        self._pad(tarfile.BLOCKSIZE)
        return FileRecord(name, reader.digest.hexdigest(), reader.size)

    def close(self) -> None:
        """Write the end-of-archive marker: two zero blocks, padded to a whole record."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self._pad(tarfile.RECORDSIZE)

    def _pad(self, unit: int) -> None:
        remainder = self.offset % unit
        if remainder:
            self._write(tarfile.NUL * (unit - remainder))

    def _write(self, data: bytes) -> None:
        self.sink.write(data)
        self.offset += len(data)


def read_archive(
    archive: Path,
    identities: list[x25519.Identity],
    destination: Path,
    *,
    progress: Progress | None = None,
) -> tuple[list[FileRecord], FileRecord]:
    """Decrypt and unpack the archive into `destination`, returning each file's record.

    The second value is the record of the encrypted archive itself, hashed as it was read.

    Raises WrongKey when no identity decrypts it and IntegrityError when the
    data is damaged or the archive contains anything but plain files and folders.
    """
    records: list[FileRecord] = []

    def consume(source: IO[bytes]) -> None:
        decompressor = zstandard.ZstdDecompressor()
        try:
            with (
                decompressor.stream_reader(source, closefd=False) as plain,
                tarfile.open(fileobj=plain, mode="r|", bufsize=TAR_BUFFER_BYTES) as tar,
            ):
                for member in tar:
                    record = _extract_member(tar, member, destination, progress)
                    if record is not None:
                        records.append(record)
        except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
            raise IntegrityError(f"{archive.name} is damaged: {exc}") from None

    secret = "\n".join(str(identity) for identity in identities).encode("ascii")
    with open(archive, "rb") as handle:
        reader = HashingReader(handle, None)
        _run_age(["decrypt"], secret, lambda sink: _copy(reader, sink), consume, archive.name)
    return records, FileRecord(archive.name, reader.digest.hexdigest(), reader.size)


def decrypt_bytes(data: bytes, identities: list[x25519.Identity], name: str) -> bytes:
    try:
        plain: bytes = pyrage.decrypt(data, identities)
    except pyrage.DecryptError as exc:
        raise _decrypt_error(name, exc) from None
    return plain


def decrypt_stream(
    source: IO[bytes] | HashingReader,
    sink: IO[bytes] | HashingWriter,
    identities: list[x25519.Identity],
    name: str,
) -> None:
    try:
        pyrage.decrypt_io(source, sink, identities)
    except pyrage.DecryptError as exc:
        raise _decrypt_error(name, exc) from None
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        # pyrage reports an authentication failure inside the stream as an OSError.
        raise IntegrityError(f"{name} is damaged and cannot be decrypted: {exc}") from None


def _decrypt_error(name: str, exc: Exception | str) -> Exception:
    text = str(exc)
    if "No matching keys" in text or "no identity matched" in text.lower():
        return WrongKey(
            f"the backup key cannot decrypt {name}: it was encrypted to another key; "
            "give the key that was in use when it was taken with --key FILE, or set "
            "backup_identity_file to it"
        )
    return IntegrityError(f"{name} is damaged and cannot be decrypted: {text}")


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path, progress: Progress | None
) -> FileRecord | None:
    relative = PurePosixPath(member.name)
    if relative.is_absolute() or ".." in relative.parts:
        raise IntegrityError(f"unsafe path {member.name!r} in the backup archive")
    target = destination.joinpath(*relative.parts)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return None
    if not member.isfile():
        raise IntegrityError(f"unexpected entry {member.name!r} (not a file) in the backup archive")

    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None
    with open(target, "wb") as handle:
        sink = HashingWriter(handle, progress)
        if member.size <= COPY_CHUNK_BYTES:
            _copy(source, sink)
        else:
            _copy_in_background(source, sink)
    os.chmod(target, member.mode & 0o777)
    return FileRecord(member.name, sink.digest.hexdigest(), sink.size)


def _copy(source: IO[bytes] | HashingReader, sink: IO[bytes] | HashingWriter) -> None:
    while chunk := source.read(COPY_CHUNK_BYTES):
        sink.write(chunk)


def _copy_in_background(source: IO[bytes], sink: HashingWriter) -> None:
    """Copy with `sink` hashing and writing in a thread, while this one decompresses the next
    chunk; the two together keep both cores busy.
    """
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
    failure: list[BaseException] = []

    def write_chunks() -> None:
        while (chunk := chunks.get()) is not None:
            if failure:
                continue  # keep taking chunks, so that the reading side never blocks
            try:
                sink.write(chunk)
            except BaseException as exc:  # handed to the reading thread below
                failure.append(exc)

    thread = threading.Thread(target=write_chunks, name="llmcloud-backup-write", daemon=True)
    thread.start()
    try:
        while not failure and (chunk := source.read(COPY_CHUNK_BYTES)):
            chunks.put(chunk)
    finally:
        chunks.put(None)
        thread.join()
    if failure:
        raise failure[0]


def _run_age(
    arguments: list[str],
    secret: bytes | None,
    feed: Callable[[IO[bytes]], Any],
    drain: Callable[[IO[bytes]], Any],
    name: str,
) -> None:
    """Run `agestream` with `arguments`: `feed` writes its input from a thread, `drain` reads
    its output in this one. `secret` (the identities to decrypt with) goes through a pipe.

    An error of age itself is raised first, because the other side then saw a cut stream.
    A broken pipe on age's output is the effect of a failed drain, so the drain's error wins.
    """
    command = [sys.executable, "-m", agestream.__name__, *arguments]
    keys = os.pipe() if secret is not None else None
    if keys is not None:
        command.append(str(keys[0]))
    try:
        process = subprocess.Popen(  # noqa: S603 - this interpreter running our module
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=() if keys is None else (keys[0],),
        )
    finally:
        if keys is not None:
            os.close(keys[0])
    if keys is not None:
        # The identities are a few hundred bytes, so the pipe buffers them until the child reads.
        with open(keys[1], "wb") as key_pipe:
            key_pipe.write(secret or b"")
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    assert stdin is not None
    assert stdout is not None
    assert stderr is not None
    _widen_pipe(stdin)
    _widen_pipe(stdout)

    feed_failure: list[BaseException] = []

    def run_feed() -> None:
        try:
            feed(stdin)
        except BaseException as exc:  # handed to this thread below
            feed_failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    thread = threading.Thread(target=run_feed, name="llmcloud-backup-age", daemon=True)
    thread.start()
    drain_failure: BaseException | None = None
    try:
        drain(stdout)
        # Read what the drain left unread, so that age is never stuck on a full pipe.
        while stdout.read(PIPE_BUFFER_BYTES):
            pass
    except BaseException as exc:
        drain_failure = exc
    finally:
        # Closing it early ends age with a broken pipe, and age's exit then ends the feed.
        stdout.close()
        thread.join()
        message = stderr.read().decode(errors="replace").strip()
        stderr.close()
        status = process.wait()

    if status == agestream.KEY_ERROR:
        raise _decrypt_error(name, message)
    if drain_failure is None and status == agestream.STREAM_ERROR:
        raise IntegrityError(f"{name} is damaged and cannot be decrypted: {message}")
    if feed_failure and not isinstance(feed_failure[0], BrokenPipeError):
        raise feed_failure[0]
    if drain_failure is not None:
        raise drain_failure
    if status != 0:
        raise BackupError(f"age failed on {name} with exit status {status}: {message}")


def _widen_pipe(pipe: IO[bytes]) -> None:
    """Let the pipe hold PIPE_BUFFER_BYTES, for fewer switches between the processes."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only; capped by pipe-max-size
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
