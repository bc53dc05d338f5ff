"""The one model of an adapter on disk: read once (peftdoctor/io/adapter.py), judged by everyone else.

check, fix, scan, combine, the serving-engine checks, verify and merge all take this object; none of
them opens the adapter's config or weights header again.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftdoctor.io.safetensors import Header
from peftdoctor.io.values import ValueScan
from peftdoctor.peft import tensor_names
from peftdoctor.peft.tensor_names import TensorName

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
KINDS = ("peft-adapter", "empty", "full-model", "medusa", "adapters-below", "unknown", "mlx-lm", "adapterhub",
         "model-config", "diffusers-lora", "kohya-lora")  # the last five: model/formats.py


@dataclass(frozen=True)
class Adapter:
    """An adapter directory as found on disk, read but not judged."""

    directory: Path
    display: str  # what the user typed, for messages
    kind: str  # one of KINDS
    origin: str = "directory"  # "directory"; "hub" (read on the Hub: config + header); "hub-cache" (local HF cache)
    config: Optional[dict[str, Any]] = None
    config_text: Optional[str] = None  # the file as read (utf-8), for rewrites that keep its layout
    config_digest: Optional[str] = None  # sha256 of its bytes, to notice someone editing it before a rewrite
    config_error: Optional[str] = None  # why the config could not be used, one line
    config_encoding: Optional[str] = None  # as json.detect_encoding finds it: "utf-8", "utf-8-sig" (a BOM), "utf-16"...
    # What every peft release raises reading the config (open() as UTF-8 text, json.load) where peftdoctor
    # could still read it (a byte-order mark, UTF-16/32): "JSONDecodeError: Unexpected UTF-8 BOM ...".
    config_peft_error: Optional[str] = None
    lfs_pointers: tuple[str, ...] = ()  # files that are Git LFS pointers, not the content they stand for
    refused: dict[str, str] = field(default_factory=dict)  # entries no command reads: name -> why (io.files)
    weight_files: tuple[str, ...] = ()
    header: Optional[Header] = None  # adapter_model.safetensors' header, when it could be read
    header_error: Optional[str] = None  # why it could not, one line (None when there is no such file)
    values: Optional[ValueScan] = None  # what the tensors' values are like (None when the data was not read)
    nested: tuple[str, ...] = ()  # adapter directories found below, for "adapters-below"
    note: Optional[str] = None  # one line for stderr: why a repo id was read from the cache, not the Hub

    def path_of(self, name: str) -> Path:
        return self.directory / name

    @property
    def escaping_links(self) -> tuple[str, ...]:
        return tuple(n for n, why in self.refused.items() if why.startswith("is a symlink"))

    @property
    def peft_type(self) -> Optional[str]:
        value = (self.config or {}).get("peft_type")
        return value if isinstance(value, str) and value else None

    @property
    def task_type(self) -> Optional[str]:
        value = (self.config or {}).get("task_type")
        return value if isinstance(value, str) and value else None

    @property
    def pickle_only(self) -> bool:
        """Weights only as adapter_model.bin: a pickle, never unpickled here."""
        return PICKLE_NAME in self.weight_files and SAFETENSORS_NAME not in self.weight_files

    @functools.cached_property
    def tensors(self) -> dict[str, TensorName]:
        """Every saved tensor name, parsed by the one key grammar (empty without a readable header)."""
        return {key: tensor_names.parse(key) for key in (self.header.tensors if self.header else ())}

    def shape_of(self, key: str) -> tuple[int, ...]:
        return self.header.tensors[key].shape if self.header else ()
