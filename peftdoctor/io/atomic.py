"""Rewrite a user's file so that a crash at any moment leaves the old file or the new one.

The new text goes to a temporary file in the same directory (same filesystem, so the rename is
atomic), is fsynced, and replaces the original with os.replace; the directory is fsynced so the
rename itself survives a power cut. A backup of the original is written the same way first.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from peftdoctor.errors import WriteRefused
from peftdoctor.io.files import read_limited

MAX_REWRITE_BYTES = 16 * 1024 * 1024  # the config size cap of adapter.py: nothing larger is ever rewritten


@dataclass(frozen=True)
class Snapshot:
    """What a file held when it was read, to notice someone else changing it before the write."""

    digest: str
    text: str

    @classmethod
    def of(cls, path: Path) -> "Snapshot":
        data = read_limited(path, MAX_REWRITE_BYTES)
        return cls(hashlib.sha256(data).hexdigest(), data.decode("utf-8-sig", errors="replace"))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a synced temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds: the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_text(path: Path, text: str, expected: Snapshot, backup_suffix: Optional[str]) -> Optional[Path]:
    """Replace `path` with `text` if it still holds `expected`; keep a backup. Returns the backup path."""
    backup = path.with_name(path.name + backup_suffix) if backup_suffix else None
    if backup is not None and (backup.exists() or backup.is_symlink()):
        raise WriteRefused(f"backup {backup} already exists; move it away or pass another --backup-suffix")
    if not os.access(path.parent, os.W_OK):
        raise WriteRefused(f"{path.parent} is not writable")
    try:
        current = read_limited(path, MAX_REWRITE_BYTES)
        mode = os.stat(path).st_mode & 0o7777
    except OSError as exc:
        raise WriteRefused(f"{path}: cannot read it again before writing: {exc.strerror}") from None
    if hashlib.sha256(current).hexdigest() != expected.digest:
        raise WriteRefused(f"{path} changed since it was read; run fix again")
    try:
        if backup is not None:
            _write_new(backup, current, mode)
        _write_new(path, text.encode("utf-8"), mode)
    except OSError as exc:
        raise WriteRefused(f"{path}: write failed, original left in place: {exc.strerror or exc}") from None
    return backup
