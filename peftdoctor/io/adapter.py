"""Find what the user pointed at and read it: an adapter directory, its config and weight files.

Only files are read here; judging them is the job of the check modules.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.base import find_base_config
from peftdoctor.io.files import (
    LFS_POINTER_START,
    MAX_JSON_BYTES,
    FileRefused,
    is_lfs_pointer,
    open_regular,
    read_limited,
    refused_entries,
)
from peftdoctor.io.limits import config_excess
from peftdoctor.io.locate import is_repo_ref, resolve
from peftdoctor.io.safetensors import HeaderError, LfsPointer, header_of, read_header, size_problems
from peftdoctor.io.values import scan as values_scan
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.model.formats import OTHER_FORMATS

__all__ = ["ConfigRead", "classify", "open_adapter", "other_format", "read_config", "read_config_file"]

_FULL_MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                       "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_MEDUSA_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


def open_adapter(target: str, online: bool = False) -> Adapter:
    """Locate and read the adapter at `target` (directory, config file path, or repo id): its entries
    under the file rules, its config, and its safetensors header, each read exactly once.

    online: a repo id (OWNER/NAME[@REVISION]) that is not a local path is read from the Hub by io/hub.py
    (its config and weights header only); otherwise a repo id is read from the local hub cache alone."""
    if online and not Path(target).exists() and is_repo_ref(target):
        from peftdoctor.io.hub import open_hub_adapter  # huggingface_hub is imported only for repo ids

        return open_hub_adapter(target)
    directory, display = resolve(target)
    origin = "directory" if Path(target).exists() else "hub-cache"
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UnusableInput(f"{target}: cannot list directory: {exc.strerror}") from None
    refused = refused_entries(directory, names)
    weights = tuple(n for n in (SAFETENSORS_NAME, PICKLE_NAME) if n in names)
    found = dict(directory=directory, display=display, origin=origin, refused=refused, weight_files=weights)
    if CONFIG_NAME not in names:
        kind, nested = _what_else(directory, names)
        return Adapter(kind=kind, nested=nested, **found)
    if SAFETENSORS_NAME in weights:
        found.update(_read_weights(directory, refused))
    if PICKLE_NAME in weights and _pointer(directory, PICKLE_NAME, refused):
        found["lfs_pointers"] = (*found.get("lfs_pointers", ()), PICKLE_NAME)
    if CONFIG_NAME in refused:
        return Adapter(kind="peft-adapter", config_error=refused[CONFIG_NAME], **found)
    read = read_config_file(directory / CONFIG_NAME)
    pointers = (*found.pop("lfs_pointers", ()), *((CONFIG_NAME,) if read.lfs_pointer else ()))
    kind = other_format(read.config, names) or "peft-adapter"
    return Adapter(kind=kind, lfs_pointers=tuple(sorted(pointers)), **read.fields(), **found)


def other_format(config: Optional[dict[str, Any]], names: list[str]) -> Optional[str]:
    """Another tool's format that also writes adapter_config.json (model/formats.py), or None."""
    if config is None or "peft_type" in config:
        return None
    for other in OTHER_FORMATS:
        if any(k in config for k in other.config_keys) or any(f in names for f in other.files):
            return other.kind
    return None


def _pointer(directory: Path, name: str, refused: dict[str, str]) -> bool:
    """Whether `name` is a Git LFS pointer, from its first bytes (adapter_model.bin: a pickle is never loaded)."""
    if name in refused:
        return False
    try:
        with open_regular(directory / name) as fh:
            return is_lfs_pointer(fh.read(len(LFS_POINTER_START)))
    except OSError:
        return False


def _read_weights(directory: Path, refused: dict[str, str]) -> dict[str, Any]:
    """The Adapter fields from adapter_model.safetensors: the header, and (when the header fits the file) the
    values, in one open of the file; or why it could not be read (a Git LFS pointer among them)."""
    if SAFETENSORS_NAME in refused:
        return dict(header_error=refused[SAFETENSORS_NAME])
    path = directory / SAFETENSORS_NAME
    try:
        with open_regular(path) as fh:
            header = header_of(fh)
            values = values_scan(fh, header) if not size_problems(header) else None
    except LfsPointer as exc:
        return dict(header_error=str(exc), lfs_pointers=(SAFETENSORS_NAME,))
    except HeaderError as exc:
        return dict(header_error=str(exc))
    except FileRefused as exc:
        return dict(header_error=str(exc).replace(f"{path} ", "", 1))
    except OSError as exc:
        return dict(header_error=f"cannot read: {exc.strerror or exc}")
    return dict(header=header, values=values)


@dataclass(frozen=True)
class ConfigRead:
    """adapter_config.json as read: the config, or a one-line reason it cannot be used."""

    config: Optional[dict[str, Any]] = None
    text: Optional[str] = None  # the decoded text, for rewrites that keep its layout
    digest: Optional[str] = None  # sha256 of the bytes
    encoding: Optional[str] = None  # json.detect_encoding's answer
    error: Optional[str] = None  # why the config cannot be used
    peft_error: Optional[str] = None  # what peft's own read raises where this one succeeded (Adapter.config_peft_error)
    lfs_pointer: bool = False

    def fields(self) -> dict[str, Any]:
        """The Adapter fields this read fills."""
        return dict(config=self.config, config_text=self.text, config_digest=self.digest, config_error=self.error,
                    config_encoding=self.encoding, config_peft_error=self.peft_error)


def read_config(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """The parsed config, or None and a one-line reason. Unreadable files are unusable input."""
    found = read_config_file(path)
    return found.config, found.error


def read_config_file(path: Path) -> ConfigRead:
    """The config at `path`, read as JSON's own rules allow (RFC 8259: UTF-8, or UTF-16/32 found by
    json.detect_encoding, a byte-order mark tolerated), so that its other problems can be judged too; and
    what peft's read raises when it differs."""
    try:
        raw = read_limited(path, MAX_JSON_BYTES)
    except FileRefused as exc:
        return ConfigRead(error=str(exc).replace(str(path) + " ", "", 1))
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if is_lfs_pointer(raw):
        return ConfigRead(digest=digest, error="is a Git LFS pointer, not the config: run `git lfs pull`",
                          lfs_pointer=True)
    encoding = json.detect_encoding(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        return ConfigRead(digest=digest, error="is not UTF-8 text")
    found = ConfigRead(text=text, digest=digest, encoding=encoding,
                       peft_error=_peft_error(raw) if encoding != "utf-8" else None)
    try:
        data = json.loads(text)
    except ValueError as exc:
        return replace(found, error=f"is not valid JSON ({exc})")
    except RecursionError:
        return replace(found, error="is nested too deeply to be an adapter config")
    if not isinstance(data, dict):
        return replace(found, error=f"is JSON but not an object (it is {type(data).__name__})")
    excess = config_excess(data)
    if excess:
        return replace(found, error=f"{excess}; not judged")
    return replace(found, config=data)


def _peft_error(raw: bytes) -> Optional[str]:
    """What json.load raises in every peft release (config.py's from_json_file: `open(path)`, text in the
    locale's encoding, UTF-8 on Linux and macOS, then json.load) on these bytes, or None."""
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    except RecursionError:
        return None  # the same for both reads: the config's own error says it
    return None


def _what_else(directory: Path, names: list[str]) -> tuple[str, tuple[str, ...]]:
    nested = tuple(sorted(str(p.parent.relative_to(directory)) for p in directory.glob(f"*/{CONFIG_NAME}")))
    kind, nested = classify(names, nested, lambda key: _config_mentions(directory, key))
    if kind == "unknown" and _kohya_lora(directory, names):  # needs the files' headers, not just their names
        return "kohya-lora", ()
    return kind, nested


def classify(names: list[str], nested: tuple[str, ...],
             config_mentions: Callable[[str], bool]) -> tuple[str, tuple[str, ...]]:
    """Classify a listing without adapter_config.json (a directory's, or a Hub repo's), so the user hears
    what it is instead. `nested`: subdirectories holding an adapter_config.json; `config_mentions(key)`:
    whether config.json has that key."""
    if not names:
        return "empty", ()
    if any(n in names for n in _MEDUSA_FILES) or config_mentions("medusa_num_heads"):
        return "medusa", ()
    if "config.json" in names and any(n in names for n in _FULL_MODEL_WEIGHTS):
        return "full-model", ()
    if nested:
        return "adapters-below", nested
    by_files = next((f.kind for f in OTHER_FORMATS if any(n in names for n in f.files)), None)
    if by_files:
        return by_files, ()
    return "unknown", ()


def _kohya_lora(directory: Path, names: list[str]) -> bool:
    """A lone LoRA .safetensors whose metadata carries kohya-ss sd-scripts' training keys (ss_*)."""
    files = [n for n in names if n.endswith(".safetensors")][:4]
    for name in files:
        if name in refused_entries(directory, [name]):
            continue
        try:
            header = read_header(str(directory / name))
        except HeaderError:
            continue
        if any(key.startswith("ss_") for key in header.metadata) or \
                any(key.startswith(("lora_unet_", "lora_te_")) for key in header.tensors):
            return True
    return False


def _config_mentions(directory: Path, key: str) -> bool:
    found = find_base_config(str(directory))
    return found is not None and key in found.config
