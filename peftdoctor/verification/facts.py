"""What verify needs to know before importing torch: the adapter's config and weight shapes, the
base's directory and config. Read from files only (the safetensors header, JSON), never judged here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftdoctor.io.adapter import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    PICKLE_NAME,
    SAFETENSORS_NAME,
    UnusableInput,
    open_adapter,
    require_safe,
    resolve,
)
from peftdoctor.io.files import read_limited
from peftdoctor.io.safetensors import HeaderError, read_header

# Prompt-learning methods prepend learned tokens or key/value prefixes: there is no weight matrix
# to fold them into, so they are deployed as PeftModel and only load + forward can be verified.
NOT_MERGEABLE = frozenset({"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING",
                           "ADAPTION_PROMPT", "CPT"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")


@dataclass(frozen=True)
class AdapterFacts:
    directory: Path
    display: str
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # weight key -> shape (safetensors only)
    pickle_only: bool = False  # adapter_model.bin without a safetensors file beside it

    @property
    def peft_type(self) -> Optional[str]:
        value = self.config.get("peft_type")
        return str(value) if value else None

    @property
    def task_type(self) -> Optional[str]:
        value = self.config.get("task_type")
        return str(value) if value else None

    @property
    def mergeable(self) -> bool:
        return self.peft_type not in NOT_MERGEABLE

    @property
    def has_tokenizer(self) -> bool:
        return any((self.directory / name).is_file() for name in TOKENIZER_FILES)

    def rows_of(self, module: str) -> Optional[int]:
        """Rows of a full weight the adapter saved for `module` (modules_to_save, saved embedding
        layers), or the vocabulary a LoRA embedding adapter was trained for; None when absent."""
        pattern = re.compile(rf"(^|\.){re.escape(module)}(\.modules_to_save\.[^.]+)?\.weight$")
        for key, shape in sorted(self.shapes.items()):
            if pattern.search(key) and len(shape) == 2:
                return shape[0]
        embedding_a = re.compile(rf"(^|\.){re.escape(module)}\.lora_embedding_A(\.[^.]+)?$")
        for key, shape in sorted(self.shapes.items()):
            if embedding_a.search(key) and len(shape) == 2:
                return shape[1]
        return None

    def mentions(self, module: str) -> bool:
        """Whether any saved weight belongs to `module` (a dotted module path of the base)."""
        return any(re.search(rf"(^|\.){re.escape(module)}\.", key) for key in self.shapes)


def read_adapter(target: str) -> AdapterFacts:
    """The adapter at `target`, or UnusableInput with one line when it is not a usable PEFT adapter."""
    adapter = open_adapter(target)
    if adapter.kind != "peft-adapter":
        raise UnusableInput(f"{target}: not a PEFT adapter ({adapter.kind}); run `peftdoctor check {target}`")
    require_safe(adapter.directory, adapter.display)
    if adapter.config is None:
        raise UnusableInput(f"{target}: {CONFIG_NAME} {adapter.config_error or 'cannot be read'}")
    shapes: dict[str, tuple[int, ...]] = {}
    if SAFETENSORS_NAME in adapter.weight_files:
        try:
            header = read_header(str(adapter.path_of(SAFETENSORS_NAME)))
        except (HeaderError, OSError) as exc:
            raise UnusableInput(f"{target}: {SAFETENSORS_NAME} is unreadable ({exc}); run `peftdoctor check`") from None
        shapes = {name: info.shape for name, info in header.tensors.items()}
    elif PICKLE_NAME not in adapter.weight_files:
        raise UnusableInput(f"{target}: no {SAFETENSORS_NAME} or {PICKLE_NAME}: there are no weights to verify")
    return AdapterFacts(adapter.directory, adapter.display, adapter.config, shapes,
                        pickle_only=SAFETENSORS_NAME not in adapter.weight_files)


@dataclass(frozen=True)
class BaseFacts:
    directory: Path
    display: str
    config: dict[str, Any]

    @property
    def quantization(self) -> Optional[dict[str, Any]]:
        q = self.config.get("quantization_config")
        return q if isinstance(q, dict) else None

    @property
    def bnb_quantized(self) -> bool:
        return bool(self.quantization and self.quantization.get("quant_method") == "bitsandbytes")

    @property
    def saved_dtype(self) -> Optional[str]:
        value = self.config.get("dtype") or self.config.get("torch_dtype")
        return str(value) if value else None

    @property
    def pickle_only(self) -> bool:
        names = {p.name for p in self.directory.iterdir()}
        return not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names) and \
            any(n.endswith(".bin") or n.endswith(".bin.index.json") for n in names)


class BaseUnavailable(Exception):
    """The base cannot be found here: verification is skipped (not unusable input), with this reason."""


def find_base(adapter: AdapterFacts, base: Optional[str]) -> BaseFacts:
    name = base or adapter.config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        raise BaseUnavailable("the adapter names no base_model_name_or_path; pass --base PATH_OR_REPO_ID")
    try:
        # resolve() reads the hub cache with local_files_only=True: verify never downloads.
        directory, display = resolve(name)
    except UnusableInput as exc:
        raise BaseUnavailable(str(exc)) from None
    require_safe(directory, display)
    try:
        config = json.loads(read_limited(directory / "config.json", MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        raise BaseUnavailable(f"{name}: no readable config.json, not a transformers model ({exc})") from None
    if not isinstance(config, dict):
        raise BaseUnavailable(f"{name}: config.json is not a JSON object")
    return BaseFacts(directory, display, config)
