"""Errors of backups, each carrying the HTTP status it maps to."""

from __future__ import annotations

from llmcloud.db.errors import ServiceError


class BackupError(ServiceError):
    """A backup, verify, restore or prune that failed; the message names the piece and the fix."""

    status_code = 500


class BackupNotFound(BackupError):
    status_code = 404


class BackupBusy(BackupError):
    """Another backup or verify holds the backup lock."""

    status_code = 409


class IntegrityError(BackupError):
    """A backup piece that is missing, altered or does not match its manifest."""

    status_code = 422


class WrongKey(BackupError):
    """The age identity cannot decrypt the backup: another key, or the key file is damaged."""

    status_code = 403
