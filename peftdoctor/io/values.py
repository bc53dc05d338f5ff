"""Read an adapter's tensor values in bounded memory, without torch or numpy: what check needs to see
NaN/Inf, all-zero lora_B matrices and empty tensors.

The data section is streamed in chunks of at most CHUNK bytes from the already opened weights file
(io/adapter.py opens it once for the header and the values). Two questions are answered per tensor,
both with byte operations that run in C:
- all zero: the chunk equals a zero buffer (a memcmp that stops at the first non-zero byte). Only
  +0.0 counts: peft initialises lora_B with zeros, which are +0.0;
- how many values are NaN or infinite: such a float has every exponent bit set. The bytes holding
  the exponent are picked out with a strided slice and mapped through a 256-entry table
  (bytes.translate); where the exponent spans two bytes, the two masks are combined as big integers.
  A quick look for the high byte's candidates (0x7F/0xFF, ...) skips the exact count in the usual
  case of a finite chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Optional

from peftdoctor.io.safetensors import Header, TensorInfo

CHUNK = 16 * 1024 * 1024


def _table(test: "callable") -> bytes:  # type: ignore[valid-type]
    return bytes(1 if test(b) else 0 for b in range(256))


# dtype -> (bytes per value, [(byte index within a value, table of bytes that may belong to a NaN/Inf)]).
# A value is non-finite exactly when every listed byte is marked (little-endian IEEE layouts).
_NONFINITE: dict[str, tuple[int, tuple[tuple[int, bytes], ...]]] = {
    "F16": (2, ((1, _table(lambda b: b & 0x7C == 0x7C)),)),
    "BF16": (2, ((1, _table(lambda b: b & 0x7F == 0x7F)), (0, _table(lambda b: b & 0x80 == 0x80)))),
    "F32": (4, ((3, _table(lambda b: b & 0x7F == 0x7F)), (2, _table(lambda b: b & 0x80 == 0x80)))),
    "F64": (8, ((7, _table(lambda b: b & 0x7F == 0x7F)), (6, _table(lambda b: b & 0xF0 == 0xF0)))),
}
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True)
class TensorValues:
    """What the values of one tensor are like."""

    numel: int
    nonfinite: int  # NaN or +-Inf values (floating-point dtypes that have them; 0 otherwise)
    all_zero: bool  # every byte zero (an empty tensor counts as all zero)


@dataclass(frozen=True)
class ValueScan:
    tensors: dict[str, TensorValues]
    error: Optional[str] = None  # the data could not be read to the end (one line); tensors holds what was read


def _numel(info: TensorInfo) -> int:
    count = 1
    for dim in info.shape:
        count *= dim
    return count


def _count_nonfinite(chunk: bytes, dtype: str) -> int:
    lane, parts = _NONFINITE[dtype]
    first_index, first_table = parts[0]
    high = chunk[first_index::lane]
    if b"\x01" not in high.translate(first_table):
        return 0  # the usual case: no value here has its high exponent bits all set
    masks = [chunk[index::lane].translate(table) for index, table in parts]
    if len(masks) == 1:
        return masks[0].count(1)
    combined = int.from_bytes(masks[0], "little")
    for mask in masks[1:]:
        combined &= int.from_bytes(mask, "little")
    return bin(combined).count("1")


def scan(fh: BinaryIO, header: Header) -> ValueScan:
    """Stream every tensor's bytes from `fh` (the weights file, header already validated against the
    file's size) and summarise each tensor's values."""
    base = header.file_size - header.data_size
    found: dict[str, TensorValues] = {}
    for info in sorted(header.tensors.values(), key=lambda t: t.start):
        remaining, position = info.end - info.start, base + info.start
        lane = _NONFINITE.get(info.dtype, (1, ()))[0]
        nonfinite, all_zero = 0, True
        fh.seek(position)
        while remaining:
            want = min(remaining, CHUNK - CHUNK % lane)
            chunk = fh.read(want)
            if len(chunk) != want:
                found[info.name] = TensorValues(_numel(info), nonfinite, False)
                return ValueScan(found, f"the data of {info.name!r} ends {remaining - len(chunk)} bytes early")
            all_zero = all_zero and chunk == _ZEROS[:want]
            if info.dtype in _NONFINITE:
                nonfinite += _count_nonfinite(chunk, info.dtype)
            remaining -= want
        found[info.name] = TensorValues(_numel(info), nonfinite, all_zero)
    return ValueScan(found)
