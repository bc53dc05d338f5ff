"""Read a safetensors header without loading tensors, and say precisely what is wrong with it.

`safetensors.safe_open` would need torch or numpy at open time (it imports the framework
module), which the light `check` path must not pull in, and it reports every defect as one
generic error. The format is a documented 8-byte little-endian header length followed by a
JSON header, so reading it here keeps `check` light and lets it name the exact defect.
"""
from __future__ import annotations

import json
import os
import reprlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from peftdoctor.io.files import FileRefused, is_lfs_pointer, open_regular

# Bits per element of every dtype the safetensors format defines: whole numbers, so that byte
# counts are exact integers however large a (hostile) header's dims are (F4 is half a byte).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
DTYPE_SIZES: dict[str, float] = {dtype: bits / 8 for dtype, bits in DTYPE_BITS.items()}  # bytes per element
# safetensors itself refuses headers above 100 MB; a larger length is corruption, not data.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_size: int
    data_size: int  # bytes after the header


class HeaderError(ValueError):
    """The header cannot be read; the message says why in one line."""


class LfsPointer(HeaderError):
    """The file is a Git LFS pointer (io/files.py): its own finding, with `git lfs pull` as the one fix."""


def read_header(path: str) -> Header:
    """Parse and validate the header of the safetensors file at `path`."""
    try:
        with open_regular(Path(path)) as fh:
            return header_of(fh)
    except FileRefused as exc:
        raise HeaderError(str(exc).replace(f"{path} ", "", 1)) from None
    except OSError as exc:
        raise HeaderError(f"cannot read: {exc.strerror or exc}") from None


def header_of(fh: BinaryIO) -> Header:
    """Parse and validate the header of the safetensors file open as `fh` (left just after the header, so
    that the caller can go on to read the values in the same open: io/adapter.py)."""
    file_size = os.fstat(fh.fileno()).st_size
    header_len = declared_length(fh.read(8), file_size)
    return parse_header(fh.read(header_len), file_size, header_len)


def declared_length(prefix: bytes, file_size: int) -> int:
    """The header length the file's first 8 bytes declare, checked against the file's size. Shared by the
    local read above and the Hub's range read (io/hub.py), so both name a defect the same way."""
    if is_lfs_pointer(prefix):
        raise LfsPointer("is a Git LFS pointer, not the weights: run `git lfs pull`")
    if len(prefix) < 8:
        raise HeaderError(f"file is {file_size} bytes, too short for the 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_HEADER_BYTES:
        raise HeaderError(f"declared header length {header_len} bytes is implausible (corrupt file)")
    if 8 + header_len > file_size:
        raise HeaderError(
            f"declared header length {header_len} bytes exceeds the file ({file_size} bytes): truncated"
        )
    return header_len


def parse_header(raw: bytes, file_size: int, header_len: int) -> Header:
    """The Header from the `header_len` JSON bytes that follow the length prefix of a `file_size`-byte file."""
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HeaderError("header is not valid JSON (corrupt or not a safetensors file)") from None
    if not isinstance(parsed, dict):
        raise HeaderError("header is not a JSON object")
    return _validated(parsed, file_size, file_size - 8 - header_len)


def _validated(parsed: dict, file_size: int, data_size: int) -> Header:
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise HeaderError("__metadata__ is not an object")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in parsed.items():
        tensors[name] = _tensor(name, entry)
    return Header(tensors=tensors, metadata={k: v if isinstance(v, str) else _brief(v) for k, v in metadata.items()},
                  file_size=file_size, data_size=data_size)


def _tensor(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise HeaderError(f"entry for tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:  # a list is unhashable: test the type first
        raise HeaderError(f"tensor {name!r} has unknown dtype {_brief(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise HeaderError(f"tensor {name!r} has an invalid shape {_brief(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise HeaderError(f"tensor {name!r} has invalid data_offsets {_brief(offsets)}")
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxlong, _BRIEF.maxstring, _BRIEF.maxother = 3, 6, 40, 60, 60


def _brief(value: object) -> str:
    """A header value for a message: short and bounded in depth, whatever the header holds."""
    return _BRIEF.repr(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def expected_nbytes(info: TensorInfo) -> int:
    """Bytes the tensor's data takes, rounded up to whole bytes; exact for any size (no floats)."""
    count = 1
    for dim in info.shape:
        count *= dim
    return -(-count * DTYPE_BITS[info.dtype] // 8)


def _count(value: int) -> str:
    # A hostile header's dims can multiply to thousands of digits, more than str(int) converts.
    return f"{value}" if value < 10**30 else "more than 10^30"


def size_problems(header: Header) -> list[str]:
    """Inconsistencies between declared tensors and the bytes actually present."""
    problems = []
    for info in header.tensors.values():
        expected = expected_nbytes(info)
        if info.end - info.start != expected:
            problems.append(f"tensor {info.name!r} declares {_count(expected)} bytes "
                            f"but its offsets span {_count(info.end - info.start)}")
    needed = max((t.end for t in header.tensors.values()), default=0)
    if needed > header.data_size:
        problems.append(f"tensors need {_count(needed)} bytes of data but the file holds {header.data_size}: "
                        "the file is truncated")
    return problems


def undeclared_bytes(header: Header) -> int:
    """Bytes after the last tensor's data that the header does not declare. safetensors refuses such a
    file ("incomplete metadata, file not fully covered"): a longer file is as broken as a shorter one."""
    needed = max((t.end for t in header.tensors.values()), default=0)
    return max(header.data_size - needed, 0)
