"""The backup archive: a zstd-compressed tar, encrypted with age, written and read as streams.

Writing runs tar and zstd in a thread that feeds a pipe, while age encrypts
from that pipe into the output file; reading runs the same steps backwards.
Each file's sha256 and size are computed on the way, so no file is read
twice. The result decrypts with the standard tools:
`age -d -i backup.age data.tar.zst.age | tar --zstd -x`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pyrage  # type: ignore[import-untyped]
import zstandard
from pyrage import x25519

from llmcloud.backup.errors import IntegrityError, WrongKey

PIPE_BUFFER_BYTES = 1024 * 1024
COPY_CHUNK_BYTES = 1024 * 1024
# tarfile reads and writes streams in 10 KiB blocks by default, which costs many calls per GB.
TAR_BUFFER_BYTES = 1024 * 1024

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
        with (
            compressor.stream_writer(sink, closefd=False) as compressed,
            tarfile.open(
                fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT, bufsize=TAR_BUFFER_BYTES
            ) as tar,
        ):
            for name, source in entries:
                records.append(_add_file(tar, name, source, progress))

    with open(output, "wb") as handle:
        sink = HashingWriter(handle)
        _run_piped(produce, lambda source: pyrage.encrypt_io(source, sink, recipients))
        handle.flush()
        os.fsync(handle.fileno())
    return records, FileRecord(output.name, sink.digest.hexdigest(), sink.size)


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

    with open(archive, "rb") as handle:
        reader = HashingReader(handle, None)
        _run_piped(lambda sink: decrypt_stream(reader, sink, identities, archive.name), consume)
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


def _decrypt_error(name: str, exc: Exception) -> Exception:
    text = str(exc)
    if "No matching keys" in text or "no identity matched" in text.lower():
        return WrongKey(
            f"the backup key cannot decrypt {name}: it was encrypted to another key; "
            "set backup_identity_file to the key that was in use when it was taken"
        )
    return IntegrityError(f"{name} is damaged and cannot be decrypted: {text}")


def _add_file(
    tar: tarfile.TarFile, name: str, source: Path, progress: Progress | None
) -> FileRecord:
    with open(source, "rb") as handle:
        info = tar.gettarinfo(fileobj=handle, arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        reader = HashingReader(handle, progress)
        tar.addfile(info, reader)
    if reader.size != info.size:
        raise IntegrityError(f"{source} changed size while it was archived; run the backup again")
    return FileRecord(name, reader.digest.hexdigest(), reader.size)


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
        while chunk := source.read(COPY_CHUNK_BYTES):
            sink.write(chunk)
    os.chmod(target, member.mode & 0o777)
    return FileRecord(member.name, sink.digest.hexdigest(), sink.size)


def _run_piped(producer: Callable[[IO[bytes]], Any], consumer: Callable[[IO[bytes]], Any]) -> None:
    """Run `producer` in a thread writing into a pipe that `consumer` reads in this thread."""
    read_end, write_end = os.pipe()
    # Both ends are closed below: the writer by the producer's thread, the reader in `finally`.
    reader = open(read_end, "rb", buffering=PIPE_BUFFER_BYTES)  # noqa: SIM115
    writer = open(write_end, "wb", buffering=PIPE_BUFFER_BYTES)  # noqa: SIM115
    failure: list[BaseException] = []

    def run_producer() -> None:
        try:
            producer(writer)
            writer.close()
        except BaseException as exc:  # handed to the consumer's thread below
            failure.append(exc)
            with contextlib.suppress(OSError):
                writer.close()

    thread = threading.Thread(target=run_producer, name="llmcloud-backup-pipe", daemon=True)
    thread.start()
    consumer_failure: BaseException | None = None
    try:
        consumer(reader)
        # Drain what the consumer left unread, so the producer is never stuck on a full pipe.
        while reader.read(PIPE_BUFFER_BYTES):
            pass
    except BaseException as exc:
        consumer_failure = exc
    finally:
        reader.close()
        thread.join()
    # The producer's error is the cause when both failed: the consumer then saw a cut stream.
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise failure[0]
    if consumer_failure is not None:
        raise consumer_failure
