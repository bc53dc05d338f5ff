"""Write safetensors shards one tensor at a time, so memory holds one tensor, never one model.

A safetensors file is an 8-byte header length, a JSON header naming every tensor's dtype, shape and
byte range, then the bytes. The plan fixes every output tensor's dtype and shape up front, so the
header is written first and every tensor at its fixed offset: untouched tensors go file to file in
the kernel (copy_file_range, no copy through Python; prefill_shard may do this in a worker thread
while torch loads), changed ones are produced one at a time and written into their ranges.
Everything is written into a hidden staging directory beside --out and renamed at the end, so an
interrupted merge never leaves a directory that looks complete.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

from peftdoctor.errors import UnusableInput, WriteFailed  # noqa: F401  (its old import location)
from peftdoctor.io.files import FileRefused, open_inside
from peftdoctor.io.safetensors import DTYPE_SIZES
from peftdoctor.io.staging import write_failure  # noqa: F401 - merge.run's name for it; the one home is io/staging

_CHUNK = 64 * 1024 * 1024  # bytes per read/write when the kernel cannot copy file to file


@dataclass(frozen=True)
class Raw:
    """Bytes taken unchanged from a base shard."""

    path: Path
    offset: int  # absolute offset in the file
    nbytes: int


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype code, e.g. "F32"
    shape: tuple[int, ...]
    source: Union[Raw, str]  # Raw bytes, or the name of a job that produces this tensor

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return int(count * DTYPE_SIZES[self.dtype])


@dataclass(frozen=True)
class OutShard:
    name: str
    tensors: tuple[OutTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# A producer returns the bytes of the named output tensor (anything with the buffer protocol).
Producer = Callable[[OutTensor], Any]


def header_bytes(shard: OutShard) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
    position = 0
    for tensor in shard.tensors:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                               "data_offsets": [position, position + tensor.nbytes]}
        position += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-(len(raw) + 8) % 8)  # data starts 8-byte aligned, as safetensors writes it


def read_exact(path: Path, offset: int, nbytes: int, into: Any = None) -> Any:
    """nbytes of `path` from `offset` (into the writable buffer `into` when given, else a new
    bytearray); a short or failed read is one line of unusable input."""
    buffer = bytearray(nbytes) if into is None else into
    view = memoryview(buffer).cast("B")
    try:
        with open_inside(path) as fh:
            fh.seek(offset)
            done = 0
            while done < nbytes:
                got = fh.readinto(view[done:])
                if not got:
                    raise UnusableInput(f"{path}: ends {nbytes - done} bytes early while reading tensor data "
                                        "(truncated or changed during the merge)")
                done += got
    except FileRefused as exc:
        raise UnusableInput(str(exc)) from None
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    return buffer


def _copy_range(src: Path, offset: int, nbytes: int, dst: int, dst_offset: int) -> None:
    """Copy nbytes of `src` from `offset` into the file descriptor `dst` at `dst_offset`, in the
    kernel where it can (copy_file_range also releases the GIL, so a prefill thread runs in parallel)."""
    try:
        source = open_inside(src)
    except FileRefused as exc:
        raise UnusableInput(str(exc)) from None
    except OSError as exc:
        raise UnusableInput(f"{src}: cannot read: {exc.strerror or exc}") from None
    with source:
        remaining, position, target = nbytes, offset, dst_offset
        try:
            while remaining:
                copied = os.copy_file_range(source.fileno(), dst, remaining, position, target)
                if copied == 0:
                    raise UnusableInput(f"{src}: ends {remaining} bytes early (truncated or changed during the merge)")
                position, target, remaining = position + copied, target + copied, remaining - copied
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        # Old kernels or filesystems without copy_file_range: copy through a bounded buffer.
        while remaining:
            chunk = read_exact(src, position, min(_CHUNK, remaining))
            _pwrite_all(dst, chunk, target)
            position, target, remaining = position + len(chunk), target + len(chunk), remaining - len(chunk)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < view.nbytes:  # pwrite may write less than asked (large buffers, signals)
        done += os.pwrite(fd, view[done:], offset + done)


def _placed(shard: OutShard) -> Iterator[tuple[OutTensor, int]]:
    """Each tensor of `shard` with the absolute file offset of its bytes."""
    position = 8 + len(header_bytes(shard))
    for tensor in shard.tensors:
        yield tensor, position
        position += tensor.nbytes


def prefill_shard(path: Path, shard: OutShard, stand_ins: Mapping[str, Raw]) -> None:
    """Write the header and every unchanged (Raw) tensor of `shard` at its final offset; needs no
    torch, so it runs while torch loads. The ranges of produced tensors are filled with `stand_ins`
    (same-sized base bytes, where there are any), only so that write_shard later overwrites page-cache
    pages that already exist: writing into a hole allocates them, which costs ~10x more than the
    overwrite. write_shard replaces every stand-in byte. Nothing is flushed here: the stand-ins'
    blocks would go to disk twice (on the 2 GB bench, 3.4 GB of disk writes instead of 2); the
    merge's Flusher syncs each shard once it is complete."""
    with open(path, "xb") as fh:
        _write_fixed_parts(fh.fileno(), shard)
        for tensor, offset in _placed(shard):
            stand_in = stand_ins.get(tensor.name)
            if not isinstance(tensor.source, Raw) and stand_in is not None and stand_in.nbytes == tensor.nbytes:
                _copy_range(stand_in.path, stand_in.offset, stand_in.nbytes, fh.fileno(), offset)


def _write_fixed_parts(fd: int, shard: OutShard) -> None:
    head = header_bytes(shard)
    _pwrite_all(fd, len(head).to_bytes(8, "little") + head, 0)
    for tensor, offset in _placed(shard):
        if isinstance(tensor.source, Raw):
            _copy_range(tensor.source.path, tensor.source.offset, tensor.source.nbytes, fd, offset)
    os.ftruncate(fd, 8 + len(head) + shard.nbytes)  # the file's full size, holes included


def write_shard(path: Path, shard: OutShard, produce: Producer, sync: bool = True,
                written: Optional[Callable[[OutTensor], None]] = None) -> None:
    """Write `shard` to `path`, or complete it when prefill_shard already wrote it (the staging
    directory is ours, so an existing file there can only be a prefill). sync=False leaves the fsync
    to the caller (fsync_file), so that the disk writes back while the next shard is computed;
    `written` is told each produced tensor once its bytes are written (its buffer can be reused)."""
    prefilled = path.exists()
    with open(path, "r+b" if prefilled else "wb", buffering=0) as fh:
        if not prefilled:
            _write_fixed_parts(fh.fileno(), shard)
        for tensor, offset in _placed(shard):
            if isinstance(tensor.source, Raw):
                continue
            data = memoryview(produce(tensor)).cast("B")
            if data.nbytes != tensor.nbytes:
                raise RuntimeError(f"{tensor.name}: produced {data.nbytes} bytes, planned {tensor.nbytes}")
            _pwrite_all(fh.fileno(), data, offset)
            del data
            if written is not None:
                written(tensor)
        if sync:
            os.fsync(fh.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_index(directory: Path, shards: tuple[OutShard, ...]) -> None:
    weight_map = {t.name: s.name for s in shards for t in s.tensors}
    index = {"metadata": {"total_size": sum(s.nbytes for s in shards)},
             "weight_map": dict(sorted(weight_map.items()))}
    write_json(directory / "model.safetensors.index.json", index)


def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def free_space_problem(parent: Path, needed: int) -> Optional[str]:
    free = shutil.disk_usage(parent).free
    if free < needed:
        return (f"{parent}: {free / 1e9:.2f} GB free but the merged model needs {needed / 1e9:.2f} GB; "
                "nothing written")
    return None
