"""The one rule for touching a file that came with an adapter or a base: what may be read, and how.

Adapters and bases are downloaded from strangers (a git clone keeps symlinks), so every command
applies the same two rules before it opens a file of theirs:
- a symlink must resolve inside the directory's own roots (the directory itself, and for a hub
  cache snapshot that repo's blobs): `tokenizer.json -> /etc/shadow` is never read or copied;
- only regular files are opened: a fifo blocks the reader forever and a device (`/dev/zero`) never
  ends, so both are refused before a byte is read, and the type is checked again on the opened
  descriptor so that a file swapped for a fifo between the two looks is still refused.
Reads are bounded: a caller names the most bytes it will take. The rules hold at the moment a file is
read, not only when its directory was first looked at: merge and verify run for minutes, and a link
planted meanwhile (tokenizer.json -> a 0600 secret, found and copied at the end) is refused by
open_inside, which checks the file it actually opened.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Optional

from peftdoctor.errors import UnusableInput

# Real adapter configs, base configs and shard indexes are a few KB to a few MB; refuse to slurp a mislabelled blob.
MAX_JSON_BYTES = 16 * 1024 * 1024
# What a clone made without git-lfs holds in place of a large file: a Git LFS pointer, whose first line is
# always "version <spec url>" (git-lfs docs/spec.md). No JSON document or safetensors file starts so.
LFS_POINTER_START = b"version "
_NOT_REGULAR = ((stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class FileRefused(OSError):
    """A file that must not be read; str() is one line saying why."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "refused"


def is_lfs_pointer(head: bytes) -> bool:
    """Whether a file whose first bytes are `head` is a Git LFS pointer, not the content it stands for."""
    return head.startswith(LFS_POINTER_START)


def own_roots(directory: Path) -> tuple[str, ...]:
    """Where the files of `directory` may really live: the directory, and for a hub cache snapshot
    (models--owner--name/snapshots/<sha>/, whose files link to ../../blobs/) that repo's blobs."""
    roots = [os.path.realpath(directory)]
    if directory.parent.name == "snapshots":
        roots.append(os.path.realpath(directory.parent.parent / "blobs"))
    return tuple(roots)


def escapes(directory: Path, name: str) -> bool:
    """Whether the entry `name` of `directory` is a symlink that resolves outside the directory's roots."""
    entry = directory / name
    if not entry.is_symlink():
        return False
    target = os.path.realpath(entry)
    return not any(os.path.commonpath([root, target]) == root for root in own_roots(directory))


def kind_of(mode: int) -> Optional[str]:
    """'a fifo', 'a character device', ... for anything but a regular file; None for a regular file."""
    return next((what for test, what in _NOT_REGULAR if test(mode)), None)


def refusal(directory: Path, name: str, *, allow_directory: bool = False) -> Optional[str]:
    """Why the entry `name` of `directory` must not be read, or None when it may be (or does not exist)."""
    if escapes(directory, name):
        return "is a symlink pointing outside the directory; not followed"
    try:
        mode = os.stat(directory / name).st_mode
    except OSError:
        return None  # missing or a dangling link: the caller says what is missing
    what = kind_of(mode)
    if what is None or (allow_directory and stat.S_ISDIR(mode)):
        return None
    return f"is {what}, not a regular file; not read"


def refused_entries(directory: Path, names: list[str]) -> dict[str, str]:
    """{name: why} for every entry of `directory` that no command may read: escaping links and
    fifos, devices and sockets (directories are fine: nothing reads them as files).

    UnusableInput when the entries cannot be looked at: a directory that is readable but not searchable
    (mode 0644 or 0600: r without x) lists its names but refuses every stat and open inside it."""
    found = {}
    try:
        for name in names:
            why = refusal(directory, name, allow_directory=True)
            if why is not None:
                found[name] = why
    except PermissionError as exc:
        raise UnusableInput(f"{directory}: lists its files but cannot open them ({exc.strerror}): the directory "
                            "needs search (x) permission as well as read (chmod +x)") from None
    return found


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file: O_NONBLOCK so that opening a fifo
    returns at once, then fstat on the descriptor itself (no window for a swap)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        what = kind_of(os.fstat(fd).st_mode)
        if what is not None:
            raise FileRefused(f"{path} is {what}, not a regular file; not read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_inside(path: Path, directory: Optional[Path] = None) -> BinaryIO:
    """Open `path`, an entry of `directory` (default: its parent), under the file rules at this moment:
    refused before opening when it is a link out of the directory's roots or not a regular file, and
    after opening when the file the descriptor really holds (Linux's /proc/self/fd) lies outside them, so
    that a link swapped in between the two looks is refused too."""
    directory = path.parent if directory is None else directory
    why = refusal(directory, str(path.relative_to(directory)))
    if why is not None:
        raise FileRefused(f"{path} {why}")
    fh = open_regular(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fh.fileno()}")
    except OSError:  # no /proc (macOS): the check before opening is what there is
        return fh
    if not any(os.path.commonpath([root, real]) == root for root in own_roots(directory)):
        fh.close()
        raise FileRefused(f"{path} is a symlink pointing outside the directory; not followed")
    return fh


def copy_inside(src: Path, dst: Path) -> None:
    """Copy the file `src` (opened by open_inside) to the new file `dst`, created with the umask's mode
    (never the source's: a 0600 file stays private to its owner's copy) and synced."""
    with open_inside(src) as source, open(dst, "xb") as target:
        shutil.copyfileobj(source, target)
        target.flush()
        os.fsync(target.fileno())


def read_limited(path: Path, limit: int) -> bytes:
    """The whole regular file at `path`, or FileRefused when it holds more than `limit` bytes."""
    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"{path} is larger than {limit} bytes; not read")
    return data


def read_stream_tail(path: str, limit: int, stdin: Optional[BinaryIO] = None) -> tuple[bytes, bool]:
    """The last `limit` bytes of a log (a regular file, a pipe or fifo, or `stdin` for "-"), read in
    bounded memory, and whether anything before them was cut. Devices are refused: `/dev/zero` never ends."""
    if path == "-" and stdin is not None:
        return _tail(stdin, limit)
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise FileRefused(f"{path} is {kind_of(mode)}, not a file or a pipe; not read")
    with open(path, "rb") as fh:
        return _tail(fh, limit)


def _tail(stream: BinaryIO, limit: int) -> tuple[bytes, bool]:
    kept = bytearray()
    cut = False
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return bytes(kept), cut
        kept += chunk
        if len(kept) > limit:
            del kept[:len(kept) - limit]
            cut = True


def require_safe(directory: Path, display: str) -> None:
    """UnusableInput unless every entry of `directory` passes the file rules (io.files): merge and
    verify hand whole directories to code that reads whatever it finds (transformers, tokenizers)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UnusableInput(f"{display}: cannot list directory: {exc.strerror}") from None
    refused = refused_entries(directory, names)
    if refused:
        name, why = next(iter(refused.items()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise UnusableInput(f"{display}: {name} {why}{more}; replace it with the file itself "
                            f"(`peftdoctor check` lists them)")
