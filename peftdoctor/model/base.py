"""The one model of a base model: its config.json and its weight files, described once (io/base.py).

check reads only what config.json says (architecture, sizes, vocabulary, tying); verify and merge use
the same object for the directory, quantization and shard layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Base:
    """A base model as found: a local directory, a hub cache snapshot, or only its cached config.json."""

    display: str  # what the user (or base_model_name_or_path) named
    config: dict[str, Any]
    directory: Optional[Path] = None  # None when only config.json is known (a hub id with just that cached)
    origin: str = "directory"  # "directory", "hub-cache", or "hub-cache-config" (config.json only)
    entries: tuple[str, ...] = ()  # the directory's entries, when there is a directory
    weight_map: dict[str, str] = field(default_factory=dict)  # tensor -> shard file, from the index

    def _text_config(self) -> dict[str, Any]:
        """Multimodal configs keep the language model's sizes under text_config."""
        text = self.config.get("text_config")
        return text if isinstance(text, dict) else self.config

    @property
    def model_type(self) -> Optional[str]:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None

    @property
    def architecture(self) -> Optional[str]:
        """The one class name of `architectures`, when it names exactly one."""
        value = self.config.get("architectures")
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        return None

    @property
    def hidden_size(self) -> Optional[int]:
        return _int(self._text_config().get("hidden_size"))

    @property
    def vocab_size(self) -> Optional[int]:
        return _int(self._text_config().get("vocab_size"))

    @property
    def tie_word_embeddings(self) -> Optional[bool]:
        """What config.json says; None when it is silent (transformers' default is to tie)."""
        for config in (self.config, self._text_config()):
            value = config.get("tie_word_embeddings")
            if isinstance(value, bool):
                return value
        return None

    @property
    def quantization(self) -> Optional[dict[str, Any]]:
        value = self.config.get("quantization_config")
        return value if isinstance(value, dict) else None

    @property
    def bnb_quantized(self) -> bool:
        return bool(self.quantization and self.quantization.get("quant_method") == "bitsandbytes")

    @property
    def saved_dtype(self) -> Optional[str]:
        value = self.config.get("dtype") or self.config.get("torch_dtype")
        return str(value) if value else None

    @property
    def safetensors_files(self) -> tuple[str, ...]:
        """The shard files, in index order (one model.safetensors when there is no index)."""
        if self.weight_map:
            return tuple(dict.fromkeys(self.weight_map.values()))
        return (SINGLE_NAME,) if SINGLE_NAME in self.entries else ()

    @property
    def sharded(self) -> bool:
        return bool(self.weight_map)

    @property
    def pickle_only(self) -> bool:
        return not self.safetensors_files and any(n.endswith((".bin", ".bin.index.json")) for n in self.entries)
