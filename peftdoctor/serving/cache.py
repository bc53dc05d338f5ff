"""Where prepare keeps the fixed copies it serves: one directory per (adapter content, engine release,
peft release, peftdoctor version), named by a digest of them, so that a second prepare of the same
adapter finds its copy and a changed adapter, engine or peftdoctor never meets a stale one.

An entry appears only by an atomic rename of a complete staging directory (io/staging.staged), so an
entry that exists is complete; two processes preparing at once both finish, and the later rename fails
and uses the earlier one's entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Optional

from peftdoctor import __version__
from peftdoctor.io.files import open_inside
from peftdoctor.model.adapter import CONFIG_NAME, SAFETENSORS_NAME, Adapter

CACHE_ENV = "PEFTDOCTOR_SERVING_CACHE"
# A safetensors header is a few KB per hundred tensors; anything past this is hashed by size alone.
_HEADER_BYTES = 100 * 1024 * 1024


def cache_root(cache_dir: Optional[Path] = None) -> Path:
    """`cache_dir`, else $PEFTDOCTOR_SERVING_CACHE, else ~/.cache/peftdoctor/serving."""
    if cache_dir is not None:
        return Path(cache_dir)
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "peftdoctor" / "serving"


def header_digest(adapter: Adapter) -> Optional[str]:
    """sha256 of the safetensors header's bytes (tensor names, shapes, dtypes, offsets), None without one.
    With the file's size it tells a changed weights file from the same one without reading its data."""
    path = adapter.path_of(SAFETENSORS_NAME)
    if SAFETENSORS_NAME not in adapter.weight_files:
        return None
    with open_inside(path) as fh:
        prefix = fh.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        return hashlib.sha256(prefix + fh.read(min(length, _HEADER_BYTES))).hexdigest()


def _sizes(adapter: Adapter, names: list[str]) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of every file the copy will hold besides the config: a tokenizer file edited in
    place changes its entry too."""
    found = []
    for name in names:
        stat = os.stat(adapter.path_of(name))
        found.append((name, stat.st_size, stat.st_mtime_ns))
    return found


def entry_key(adapter: Adapter, files: list[str], engine: str, peft_release: str) -> str:
    """The entry's name: a digest of what decides the fixed copy's content."""
    parts = {
        "config": adapter.config_digest,
        "weights_header": header_digest(adapter),
        "files": _sizes(adapter, [n for n in files if n != CONFIG_NAME]),
        "engine": engine,
        "peft": peft_release,
        "peftdoctor": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
