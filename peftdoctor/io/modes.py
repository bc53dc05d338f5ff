"""Output directories get the mode a plain `mkdir` would give them: 0777 less the umask.

tempfile.mkdtemp creates a staging directory 0700 (private while it is being filled); renamed into
place as it is, a merged model would be unreadable to every other user, e.g. a serving container
running under another uid. Files are created with open(), which already follows the umask.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
    save_file (used by save_pretrained) creates its files 0600 whatever the umask."""
    mask = umask()
    for path in directory.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
