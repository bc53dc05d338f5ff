"""Rewrite a user's file so that a crash at any moment leaves the old file or the new one.

The new text goes to a temporary file in the same directory (same filesystem, so the rename is
atomic), is fsynced, and replaces the original with os.replace; the directory is fsynced so the
rename itself survives a power cut. A backup of the original is written first and linked into
place, so an existing backup is never overwritten.

Two runs on one file: the write happens under an exclusive flock on the directory, and the file is
compared with what was read while the lock is held, so the slower run sees the faster one's write
and refuses (exit 2) instead of silently undoing it. A kill -9 releases the lock; what it leaves
(temporary files named with their owner's pid, a complete backup) the next run cleans up or reuses.

A write that fails (an immutable file: the rename is refused with EPERM; a full disk) leaves the
directory as it was: the temporary file and the backup this run made are removed again, and the one
line names the file and the system's reason.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from peftdoctor.errors import UsageError, WriteRefused, os_reason
from peftdoctor.io.files import read_limited
from peftdoctor.io.leftovers import sweep, temp_prefix
from peftdoctor.io.staging import fsync_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; the digest re-check still catches most races
    fcntl = None  # type: ignore[assignment]

MAX_REWRITE_BYTES = 16 * 1024 * 1024  # the config size cap of adapter.py: nothing larger is ever rewritten
LOCK_WAIT_SECONDS = 10.0  # a rewrite of a 16 MB config takes well under a second


@dataclass(frozen=True)
class Snapshot:
    """What a file held when it was read, to notice someone else changing it before the write."""

    digest: str
    text: str

    @classmethod
    def of(cls, path: Path) -> "Snapshot":
        data = read_limited(path, MAX_REWRITE_BYTES)
        return cls(hashlib.sha256(data).hexdigest(), data.decode("utf-8-sig", errors="replace"))


@dataclass(frozen=True)
class Written:
    """What a rewrite left besides the file: its backup, and what it found or cleaned up beside it."""

    backup: Optional[Path]
    notes: tuple[str, ...] = ()


@contextmanager
def locked(directory: Path, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold an exclusive flock on `directory`; the kernel releases it when the holder dies."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise WriteRefused(f"{directory}: cannot lock it for writing: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WriteRefused(f"{directory}: another peftdoctor run has been writing here for "
                                       f"{wait:.0f} s; nothing written, try again") from None
                time.sleep(0.005)
            except OSError:
                break  # a filesystem without flock: the digest re-check still stands
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    """A synced temporary file beside `path`, named with our pid, holding `data`."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a synced temporary file and an atomic rename."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)


def _make_backup(backup: Path, original: Path, current: bytes, mode: int) -> Optional[str]:
    """Create `backup` holding `current`, never replacing an existing file; a note when one is reused."""
    if backup.exists() or backup.is_symlink():
        return _reuse(backup, original, current)
    tmp = _write_temp(backup, current, mode)
    try:
        os.link(tmp, backup)  # unlike a rename, a link fails if the name exists: never overwrites
    except FileExistsError:
        return _reuse(backup, original, current)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        _exclusive_copy(tmp, backup)  # a filesystem without hard links
    finally:
        _unlink(tmp)
    fsync_dir(backup.parent)
    return None


def _exclusive_copy(source: str, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(source, target)
    except BaseException:
        _unlink(str(target))  # ours (O_EXCL): a half-written backup must not stay beside the file
        raise


def _reuse(backup: Path, original: Path, current: bytes) -> str:
    """An existing backup holding exactly the file about to be replaced already is its backup (a run
    killed between writing the backup and the rewrite leaves one); anything else is the user's."""
    size = ""
    if not backup.is_symlink() and backup.is_file():
        try:
            same = read_limited(backup, MAX_REWRITE_BYTES) == current
        except OSError:
            same = False
        if same:
            return f"kept the existing backup {backup}: it already holds {original.name} as it was before this write"
        size = f"{backup.stat().st_size} bytes, "
    raise WriteRefused(f"backup {backup} already exists ({size}not the current {original.name}); "
                       "move it away or pass another --backup-suffix")


def backup_path(path: Path, backup_suffix: Optional[str]) -> Optional[Path]:
    """Where the original of `path` is kept: FILE+SUFFIX beside it (None: no backup). A suffix holding a
    path separator would put it in another directory, one holding NUL names no file: a usage error."""
    if not backup_suffix:
        return None
    held = next((c for c in ("/", os.sep, os.altsep or "/", "\0") if c in backup_suffix), None)
    if held is not None:
        raise UsageError(f"--backup-suffix {backup_suffix!r} holds {'NUL' if held == chr(0) else repr(held)}: the "
                         "backup is FILE+SUFFIX beside the file, so a suffix is part of a file name (e.g. .orig)")
    return path.with_name(path.name + backup_suffix)


def replace_text(path: Path, text: str, expected: Snapshot, backup_suffix: Optional[str]) -> Written:
    """Replace `path` with `text` if it still holds `expected`; keep a backup."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WriteRefused(f"{path}: the new text cannot be written as UTF-8 ({exc.reason}); nothing written") from None
    backup = backup_path(path, backup_suffix)
    if not os.access(path.parent, os.W_OK):
        raise WriteRefused(f"{path.parent}: not writable (permissions, a read-only mount or an immutable "
                           "directory); nothing written")
    with locked(path.parent):
        notes = list(sweep(path.parent, (path.name,) + ((backup.name,) if backup else ())))
        try:
            current = read_limited(path, MAX_REWRITE_BYTES)
            mode = os.stat(path).st_mode & 0o7777
        except OSError as exc:
            raise WriteRefused(f"{path}: cannot read it again before writing: {exc.strerror}") from None
        if hashlib.sha256(current).hexdigest() != expected.digest:
            raise WriteRefused(f"{path} changed since it was read (another fix or an editor wrote it); "
                               "nothing written, run fix again")
        made = None  # the backup this run created: removed again if the rewrite fails
        try:
            if backup is not None:
                reused = _make_backup(backup, path, current, mode)
                made = None if reused else backup
                notes += [reused] if reused else []
            _write_new(path, data, mode)
        except OSError as exc:
            if made is not None:
                _unlink(str(made))  # the original stands: a copy of it beside it would only be a stray file
            raise WriteRefused(f"{path}: write failed, original left in place: {_failed(path, exc)}") from None
    return Written(backup, tuple(notes))


def _failed(path: Path, exc: OSError) -> str:
    """The reason a write failed, naming the file the system refused when it is not `path` itself (the
    backup, the temporary file); a rename names its target second, the file the user knows."""
    failed = exc.filename2 if exc.filename2 is not None else exc.filename
    if failed is None or str(failed) == str(path):
        return exc.strerror or str(exc)
    return os_reason(exc, failed)


def clean_leftovers(path: Path, backup_suffix: Optional[str]) -> tuple[str, ...]:
    """Sweep a killed run's temporary files beside `path` when there is nothing to write."""
    if not os.access(path.parent, os.W_OK):
        return ()
    backup = backup_path(path, backup_suffix)
    names = (path.name,) + ((backup.name,) if backup else ())
    with locked(path.parent):
        return sweep(path.parent, names)
