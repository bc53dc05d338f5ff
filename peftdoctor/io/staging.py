"""Write a whole output directory (a merged model) so that nothing incomplete ever stands at --out.

Everything goes into a hidden staging directory beside --out (same filesystem), named with this
process's pid, and is renamed to --out only when complete; on any failure it is removed, and a
later run removes the staging directories of runs that were killed (io/leftovers.py). Used by
`merge` and by `verify --out`; single files are rewritten by io/atomic.py.

The result gets the modes a plain `mkdir` and `open` would give: tempfile.mkdtemp creates the
staging directory 0700 and safetensors' save_file writes its files 0600, so a merged model renamed
into place as it was would be unreadable to every other user (a serving container under another uid).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from peftdoctor.errors import UnusableInput, WriteFailed, os_reason
from peftdoctor.io.files import FileRefused
from peftdoctor.io.leftovers import clear_dead_stagings, staging_prefix


def check_out(out: str) -> Path:
    """The --out of merge and verify, the same for both: a new directory in one that exists, or an empty
    directory (staged() replaces it at the end). Refused before any work: a link, a file, a directory
    that holds something (nothing is ever overwritten), a parent that does not exist."""
    path = Path(out)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UnusableInput(f"--out {out}: exists and is not a directory; nothing written")
    if path.is_dir() and any(path.iterdir()):
        raise UnusableInput(f"--out {out}: directory is not empty; choose a new or empty one (nothing is overwritten)")
    if not path.parent.is_dir():
        raise UnusableInput(f"--out {out}: parent directory {path.parent} does not exist")
    return path


def write_failure(exc: Exception, out: Path, what: Optional[str] = None) -> WriteFailed:
    """The one line for a write into --out that failed (exit 2): the file it failed on and why. An OSError
    names its file ("FILE: reason", errors.os_reason; from write() it names none), another writer's error
    (safetensors') names none: then `what` says which file was being written. staged() has removed
    everything by the time it is shown."""
    writing = what or "the merged model"
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return WriteFailed(f"--out {out}: disk full while writing {writing}; nothing was left at {out}")
    if isinstance(exc, OSError):
        return WriteFailed(f"--out {out}: write failed ({os_reason(exc)}); nothing was left at {out}")
    why = (str(exc).splitlines() or [type(exc).__name__])[0]
    return WriteFailed(f"--out {out}: writing {writing} failed ({why}); nothing was left at {out}")


def umask() -> int:
    """This process's umask. Read from /proc where it can be: os.umask can only read it by setting
    it, which for a moment changes the mode of files other threads create."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def staging_dir(prefix: str, parent: Path) -> Path:
    """A new uniquely named directory in `parent` (mkdtemp), with the mode mkdir would give it."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(directory, 0o777 & ~umask())
    return directory


def follow_umask(directory: Path) -> None:
    """Give every file under `directory` 0666 & ~umask, every directory 0777 & ~umask: safetensors'
    save_file (used by save_pretrained) creates its files 0600 whatever the umask. A file with more than
    one link is a hard link to someone's file (fix --out --link): its mode is that file's, never changed."""
    mask = umask()
    for path in directory.rglob("*"):
        if not path.is_symlink() and (path.is_dir() or os.stat(path).st_nlink == 1):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` survive a power cut (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def staged(out: Path, say: Callable[[str], object] = lambda _note: None, sync_files: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside `out`; on success give it the umask's modes, sync it and rename
    it to `out` (which must not exist, or be an empty directory); remove it otherwise. `say` hears what
    was cleaned up of killed runs; `sync_files` fsyncs every file (writers that did not do it themselves).
    A failed write ends in WriteFailed (write_failure), one line naming the file and the reason."""
    for note in clear_dead_stagings(out):
        say(note)
    try:
        staging = staging_dir(staging_prefix(out), out.parent)
    except OSError as exc:
        raise write_failure(exc, out) from None
    try:
        yield staging
        follow_umask(staging)
        if sync_files:
            fsync_tree(staging)
        fsync_dir(staging)
        if out.is_dir() and not out.is_symlink():
            out.rmdir()  # an empty directory the caller accepted; rmdir refuses one that is not
        os.rename(staging, out)  # fails rather than replace if someone created --out meanwhile
        fsync_dir(out.parent)
    except FileRefused:  # a file read into the output turned out not to be readable: not a failed write
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_failure(exc, out) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
