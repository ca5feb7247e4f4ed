from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from pyrage import x25519

from llmcloud.backup import archive
from llmcloud.backup.errors import IntegrityError, WrongKey

# Larger than one copy chunk, so that extraction hashes and writes in its own thread.
LARGE_BYTES = 3 * archive.COPY_CHUNK_BYTES + 12345


@pytest.fixture
def identity() -> x25519.Identity:
    return x25519.Identity.generate()


def make_entries(folder: Path) -> list[tuple[str, Path]]:
    large = folder / "large.bin"
    large.write_bytes(os.urandom(LARGE_BYTES))
    small = folder / "small.txt"
    small.write_text("a small file\n")
    return [("database/large.bin", large), ("data/small.txt", small)]


def test_archive_round_trip_keeps_every_byte(tmp_path: Path, identity: x25519.Identity) -> None:
    entries = make_entries(tmp_path)
    output = tmp_path / "data.tar.zst.age"

    written, written_archive = archive.write_archive(entries, output, [identity.to_public()])
    read, read_archive = archive.read_archive(output, [identity], tmp_path / "unpacked")

    assert read == written
    assert read_archive == written_archive
    large = (tmp_path / "unpacked" / "database" / "large.bin").read_bytes()
    assert hashlib.sha256(large).hexdigest() == written[0].sha256


def test_archive_record_matches_file_on_disk(tmp_path: Path, identity: x25519.Identity) -> None:
    output = tmp_path / "data.tar.zst.age"

    _, record = archive.write_archive(make_entries(tmp_path), output, [identity.to_public()])

    assert record.sha256 == hashlib.sha256(output.read_bytes()).hexdigest()


def test_read_archive_with_other_key_raises_wrong_key(
    tmp_path: Path, identity: x25519.Identity
) -> None:
    output = tmp_path / "data.tar.zst.age"
    archive.write_archive(make_entries(tmp_path), output, [identity.to_public()])

    with pytest.raises(WrongKey, match="encrypted to another key") as caught:
        archive.read_archive(output, [x25519.Identity.generate()], tmp_path / "unpacked")

    assert "--key FILE" in caught.value.message
    assert "backup_identity_file" in caught.value.message


def test_read_archive_names_cut_archive(tmp_path: Path, identity: x25519.Identity) -> None:
    output = tmp_path / "data.tar.zst.age"
    archive.write_archive(make_entries(tmp_path), output, [identity.to_public()])
    with open(output, "r+b") as handle:
        handle.truncate(output.stat().st_size // 2)

    with pytest.raises(IntegrityError, match=r"data\.tar\.zst\.age is damaged"):
        archive.read_archive(output, [identity], tmp_path / "unpacked")


def test_read_archive_reports_failed_write_of_large_file(
    tmp_path: Path, identity: x25519.Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "data.tar.zst.age"
    archive.write_archive(make_entries(tmp_path), output, [identity.to_public()])

    def full_disk(self: archive.HashingWriter, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.HashingWriter, "write", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        archive.read_archive(output, [identity], tmp_path / "unpacked")


def test_tar_writer_matches_tarfile_stream(tmp_path: Path) -> None:
    entries = make_entries(tmp_path)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, source in entries:
            info = tar.gettarinfo(source, arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(source, "rb") as handle:
                tar.addfile(info, handle)

    written = io.BytesIO()
    writer = archive.TarWriter(written)
    for name, source in entries:
        writer.add_file(name, source, None)
    writer.close()

    assert written.getvalue() == expected.getvalue()


def test_tar_writer_names_file_that_shrank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "shrinking.bin"
    source.write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def fstat_then_shrink(descriptor: int) -> os.stat_result:
        status = real_fstat(descriptor)
        os.truncate(source, 100)
        return status

    monkeypatch.setattr(archive.os, "fstat", fstat_then_shrink)
    with pytest.raises(IntegrityError, match=r"shrinking\.bin changed size"):
        archive.TarWriter(io.BytesIO()).add_file("data/shrinking.bin", source, None)
