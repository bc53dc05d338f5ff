"""What a killed run leaves behind, and how the next run tells it from a live run's work.

A kill -9 runs no cleanup. Every temporary file and staging directory peftdoctor makes therefore
carries its owner's pid in its name; the next run on the same directory removes those whose owner
is dead (or, for names without a pid, that are older than any live write takes) and reports the rest
with their size. Nothing outside these exact name patterns is ever touched.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

STALE_SECONDS = 10.0  # a temporary file this old is a leftover, not a write in progress


def temp_prefix(path: Path) -> str:
    """The name prefix of a temporary file that will replace `path`: it carries our pid."""
    return f".{path.name}.{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, counts as dead)."""
    if pid <= 0 or pid == os.getpid():
        return True  # 0 or negative is no pid we wrote: never treat it as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _temp_pattern(name: str) -> re.Pattern[str]:
    # mkstemp's names: prefix + 8 of [a-z0-9_] + suffix; older versions wrote no pid into the prefix.
    return re.compile(rf"\.{re.escape(name)}\.(?:(\d+)-)?[a-z0-9_]{{8}}\.tmp")


def sweep(directory: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """Remove the temporary files that killed rewrites of `names` left in `directory`; say what was done.

    Only names of our own pattern, and only when the owner pid is dead or the file is older than a
    few seconds (a live writer holds the directory lock and finishes well within that)."""
    patterns = [_temp_pattern(n) for n in names]
    removed: list[str] = []
    kept: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    now = time.time()
    for entry in entries:
        match = next((m for m in (p.fullmatch(entry.name) for p in patterns) if m), None)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        owner = int(match.group(1)) if match.group(1) else None
        described = f"{entry.name} ({info.st_size} bytes)"
        if (owner is not None and not pid_alive(owner)) or now - info.st_mtime > STALE_SECONDS:
            try:
                os.unlink(entry.path)
                removed.append(described)
            except OSError:
                kept.append(described)
        else:
            kept.append(described)
    notes = []
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) an interrupted run left in {directory}: "
                     + ", ".join(sorted(removed)))
    if kept:
        notes.append(f"left in place in {directory}, possibly still being written: " + ", ".join(sorted(kept)))
    return tuple(notes)


_STAGING = ".partial-"  # mkdtemp adds 8 of [a-z0-9_]


def staging_prefix(out: Path) -> str:
    """The name prefix of a merge's staging directory for `out`: it carries the owner's pid."""
    return f".{out.name}{_STAGING}{os.getpid()}-"


def clear_dead_stagings(out: Path) -> tuple[str, ...]:
    """Remove staging directories for `out` whose owner is dead; report those whose owner is unknown."""
    pattern = re.compile(rf"\.{re.escape(out.name)}{re.escape(_STAGING)}(?:(\d+)-)?[a-z0-9_]{{8}}")
    notes: list[str] = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return ()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        owner = int(match.group(1)) if match.group(1) else None
        if owner is not None and pid_alive(owner):
            continue  # a live run's (merge, verify --out, fix --out): never touched
        size = _tree_size(Path(entry.path))
        if owner is not None:
            shutil.rmtree(entry.path, ignore_errors=True)
            notes.append(f"removed {entry.path} ({size} bytes), the staging directory of an interrupted "
                         f"run (pid {owner}, no longer running)")
        else:
            notes.append(f"left {entry.path} ({size} bytes) in place: the staging directory of an earlier "
                         "run whose owner cannot be told; delete it if no merge or fix --out is running")
    return tuple(notes)


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total
