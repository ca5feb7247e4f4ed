"""Benchmark llmcloud's backup, verify and restore against restic on the same data.

Usage: .venv/bin/python benchmarks/backup_bench.py [--db-mb 1024] [--uploads-mb 100] [--no-write]

Builds a data dir with a SQLite database of --db-mb megabytes (chat-like
text rows drawn from a fixed vocabulary, so it compresses like text) and an
uploads folder of --uploads-mb megabytes of random bytes (like images and
PDFs, which do not compress). Then, in one run, it times:

- `run_backup` to a folder target (snapshot, tar, zstd, age, publish);
- `verify_backup` (decrypt, checksums, integrity_check, row counts);
- `restore_backup` into a new data dir;
- `restic backup` of the same database file and uploads folder into a new
  local repository, and `restic restore` of that snapshot.

Throughput is the input size (database plus uploads) divided by the time.
It prints the results as Markdown and rewrites the "Backups" section of
docs/benchmarks.md unless --no-write is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from llmcloud.backup.keys import identity_path, load_identity
from llmcloud.backup.restore import restore_backup
from llmcloud.backup.run import run_backup
from llmcloud.backup.targets import targets_from_settings
from llmcloud.backup.verify import verify_backup
from llmcloud.db import open_database
from llmcloud.settings import Settings

REPOSITORY = Path(__file__).resolve().parent.parent
DOCS_PAGE = REPOSITORY / "docs" / "benchmarks.md"
SECTION_TITLE = "## Backups"
MB = 1_000_000
RESTIC_PASSWORD = "benchmark"


def build_data_dir(data_dir: Path, db_mb: int, uploads_mb: int) -> int:
    """Write the database and uploads; returns their total size in bytes."""
    database = open_database(f"sqlite:///{data_dir / 'llmcloud.db'}")
    database.upgrade()
    database.dispose()

    generator = random.Random(1)
    vocabulary = [
        "".join(generator.choices("abcdefghijklmnopqrstuvwxyz", k=generator.randint(2, 10)))
        for _ in range(5000)
    ]
    connection = sqlite3.connect(data_dir / "llmcloud.db")
    connection.execute("CREATE TABLE bench_messages (id INTEGER PRIMARY KEY, content TEXT)")
    database_file = data_dir / "llmcloud.db"
    while database_file.stat().st_size < db_mb * MB:
        rows = [(" ".join(generator.choices(vocabulary, k=150)),) for _ in range(20_000)]
        connection.executemany("INSERT INTO bench_messages (content) VALUES (?)", rows)
        connection.commit()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()

    uploads = data_dir / "uploads"
    uploads.mkdir()
    for number in range(uploads_mb):
        (uploads / f"upload-{number:04d}.bin").write_bytes(os.urandom(MB))
    return database_file.stat().st_size + uploads_mb * MB


def drop_caches_hint() -> None:
    os.sync()


def timed(function: object, *args: object, **kwargs: object) -> float:
    drop_caches_hint()
    started = time.perf_counter()
    function(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started


def run_restic(arguments: list[str], repository: Path, cwd: Path | None = None) -> None:
    environment = {
        **os.environ,
        "RESTIC_REPOSITORY": str(repository),
        "RESTIC_PASSWORD": RESTIC_PASSWORD,
    }
    subprocess.run(
        ["restic", "--quiet", *arguments],
        env=environment,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def restic_version() -> str:
    output = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    return output.stdout.split(" compiled")[0]


def measure(work: Path, db_mb: int, uploads_mb: int) -> dict[str, float]:
    data_dir = work / "data"
    data_dir.mkdir()
    size = build_data_dir(data_dir, db_mb, uploads_mb)
    settings = Settings(
        data_dir=data_dir,
        backup_targets=[str(work / "target")],
        backup_schedule="",
        backup_verify_schedule="",
    )
    targets = targets_from_settings(settings)

    seconds: dict[str, float] = {}
    # Write the generated data out first, as `timed` does before every other step, so that the
    # first step does not pay for the kernel's writeback of 1 GB of fresh pages.
    drop_caches_hint()
    started = time.perf_counter()
    result = run_backup(settings, targets)
    seconds["llmcloud backup"] = time.perf_counter() - started
    identities = [load_identity(identity_path(settings))]
    seconds["llmcloud verify"] = timed(
        verify_backup, settings, targets, identities, result.backup_id
    )
    seconds["llmcloud restore"] = timed(
        restore_backup, settings, targets, identities, result.backup_id, data_dir=work / "restored"
    )

    repository = work / "restic-repo"
    run_restic(["init"], repository)
    seconds["restic backup"] = timed(
        run_restic, ["backup", "llmcloud.db", "uploads"], repository, data_dir
    )
    seconds["restic restore"] = timed(
        run_restic, ["restore", "latest", "--target", str(work / "restic-restored")], repository
    )
    return {"size": size, "archive": result.archive_size, **seconds}


def section(results: dict[str, float], db_mb: int, uploads_mb: int) -> str:
    size = results["size"]
    rate = {name: size / MB / results[name] for name in results if " " in name}
    backup_ratio = rate["llmcloud backup"] / rate["restic backup"]
    restore_ratio = rate["llmcloud restore"] / rate["restic restore"]
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        SECTION_TITLE,
        "",
        f"Backup, verify and restore of a {db_mb} MB SQLite database (chat-like text rows) "
        f"plus a {uploads_mb} MB uploads folder (random bytes), beside {restic_version()} "
        "backing up the same database file and folder to a new local repository, in the "
        "same run. Throughput is the input size divided by the wall time. Both write to "
        "the same disk; llmcloud's target is a folder there.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Load average after: {load}. Date "
        f"{datetime.now(UTC).date()}. Command: `.venv/bin/python benchmarks/backup_bench.py "
        f"--db-mb {db_mb} --uploads-mb {uploads_mb}`",
        "",
        f"Input {size / MB:.0f} MB; llmcloud's encrypted archive {results['archive'] / MB:.0f} MB.",
        "",
        "| Step | Seconds | MB/s |",
        "|---|--:|--:|",
    ]
    for name in (
        "llmcloud backup",
        "llmcloud verify",
        "llmcloud restore",
        "restic backup",
        "restic restore",
    ):
        lines.append(f"| {name} | {results[name]:.1f} | {rate[name]:.0f} |")
    lines += [
        "",
        "Target: llmcloud's backup and restore each at least 1.0 times restic's throughput. "
        f"Backup: {backup_ratio:.2f} times restic's ({'met' if backup_ratio >= 1 else 'not met'}); "
        f"restore: {restore_ratio:.2f} times ({'met' if restore_ratio >= 1 else 'not met'}).",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    page = DOCS_PAGE.read_text()
    start = page.find(SECTION_TITLE + "\n")
    if start == -1:
        page = page.rstrip("\n") + "\n\n" + text
    else:
        following = page.find("\n## ", start + len(SECTION_TITLE))
        end = len(page) if following == -1 else following + 1
        page = page[:start] + text + ("\n" + page[end:] if following != -1 else "")
    DOCS_PAGE.write_text(page.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-mb", type=int, default=1024)
    parser.add_argument("--uploads-mb", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="Folder for the data (default: a temporary folder).",
    )
    arguments = parser.parse_args()
    if shutil.which("restic") is None:
        sys.exit("restic not found; install it (Debian: apt-get install restic)")

    with tempfile.TemporaryDirectory(dir=arguments.work_dir) as work:
        results = measure(Path(work), arguments.db_mb, arguments.uploads_mb)
    text = section(results, arguments.db_mb, arguments.uploads_mb)
    print(text)
    if not arguments.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
