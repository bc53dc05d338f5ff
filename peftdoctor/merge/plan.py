"""Which base tensors an adapter changes, read from file headers only (no torch).

peft saves a LoRA adapter's tensors under the module they adapt, prefixed by the PeftModel wrapper:
`base_model.model.<module>.lora_A.weight`, `...lora_embedding_A`, `...lora_magnitude_vector` (DoRA),
`...base_layer.weight` (an embedding saved whole, e.g. with a resized vocabulary), and full copies
of modules_to_save as `base_model.model.<module>.<param>`. Here they are grouped per module and tied
to the base checkpoint's tensor names, so that the stream knows, before it writes a byte, the name,
dtype and shape of every tensor of the output (a safetensors header must precede its data).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import MergeRefused  # noqa: F401  (run.py raises it as plan.MergeRefused)
from peftdoctor.io.adapter import MAX_CONFIG_BYTES, SAFETENSORS_NAME, UnusableInput
from peftdoctor.io.files import read_limited
from peftdoctor.io.safetensors import Header, HeaderError, TensorInfo, read_header, size_problems

PREFIX = "base_model.model."
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_LORA_PART = re.compile(r"^(?P<module>.+?)\.(?P<role>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                        r"lora_magnitude_vector|base_layer)(\..+)?$")
# Older peft releases saved modules_to_save copies under their wrapper's name.
_SAVED_COPY = re.compile(r"\.modules_to_save(\.[^.]+)?(?=\.[^.]+$)")
# Config options of LoRA that this stream cannot reproduce layer by layer, and why.
_UNSTREAMABLE = {
    "target_parameters": "LoRA on bare nn.Parameters (MoE experts) needs the whole model's parameter wrappers",
    "trainable_token_indices": "trainable tokens are merged through peft's model-level token adapters",
    "layer_replication": "layer replication rebuilds the model's layer list",
}
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class BaseShard:
    path: Path
    tensors: tuple[TensorInfo, ...]  # in file order
    data_start: int  # byte offset of the data section in the file


@dataclass(frozen=True)
class Base:
    directory: Path
    display: str
    config: dict[str, Any]
    shards: tuple[BaseShard, ...]
    sharded: bool  # an index file names the shards (else one model.safetensors)
    locations: dict[str, tuple[BaseShard, TensorInfo]] = field(default_factory=dict)

    def find(self, name: str) -> Optional[tuple[BaseShard, TensorInfo]]:
        return self.locations.get(name)


@dataclass(frozen=True)
class AdapterFiles:
    directory: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]  # saved names, with the base_model.model. prefix


@dataclass(frozen=True)
class ModuleDelta:
    """The adapter tensors for one adapted module (LoRA), keyed as saved."""

    module: str  # module path in the model, e.g. model.layers.0.self_attn.q_proj
    keys: tuple[str, ...]


@dataclass(frozen=True)
class AdapterPlan:
    lora: dict[str, ModuleDelta] = field(default_factory=dict)  # module -> its LoRA tensors
    copies: dict[str, str] = field(default_factory=dict)  # model parameter name -> saved adapter key


def read_base(directory: Path, display: str) -> Base:
    """The base's config and every shard's header; a damaged shard is unusable input (one line)."""
    try:
        config = json.loads(read_limited(directory / "config.json", MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        raise UnusableInput(f"{display}: no readable config.json, not a transformers model ({exc})") from None
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(read_limited(index, MAX_CONFIG_BYTES))["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnusableInput(f"{display}: {INDEX_NAME} is unreadable ({exc})") from None
        sharded = True
    elif (directory / SINGLE_NAME).is_file():
        names, sharded = [SINGLE_NAME], False
    else:
        raise UnusableInput(f"{display}: no {SINGLE_NAME} or {INDEX_NAME}: only safetensors bases can be streamed")
    odd = next((n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")), None)
    if odd is not None:
        raise UnusableInput(f"{display}: {INDEX_NAME} names the shard {odd!r} outside the model directory; not read")
    shards = tuple(_shard(directory / n, display) for n in names)
    locations = {info.name: (shard, info) for shard in shards for info in shard.tensors}
    return Base(directory, display, config, shards, sharded, locations)


def _checked_header(path: Path, where: str) -> Header:
    """The header of a file the merge will read whole: unreadable or short files are unusable input."""
    try:
        header = read_header(str(path))
    except HeaderError as exc:
        raise UnusableInput(f"{where} {exc}") from None
    problems = size_problems(header)
    if problems:
        raise UnusableInput(f"{where}: {problems[0]}")
    return header


def _shard(path: Path, display: str) -> BaseShard:
    header = _checked_header(path, f"{display}: shard {path.name}")
    ordered = tuple(sorted(header.tensors.values(), key=lambda t: t.start))
    return BaseShard(path, ordered, header.file_size - header.data_size)


def read_adapter(directory: Path, config: dict[str, Any]) -> AdapterFiles:
    path = directory / SAFETENSORS_NAME
    if not path.is_file():
        raise UnusableInput(f"{directory}: no {SAFETENSORS_NAME}; streaming merge reads safetensors adapters only "
                            "(a pickled adapter_model.bin is never unpickled)")
    header = _checked_header(path, f"{directory}: {SAFETENSORS_NAME}")
    return AdapterFiles(directory, config, header.tensors)


def refusal(config: dict[str, Any]) -> Optional[str]:
    """Why this adapter cannot be stream-merged, or None."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        return (f"peft_type {peft_type!r} cannot be stream-merged: only LoRA (and its variants rsLoRA, DoRA, patterns) "
                "is merged layer by layer here; load it with peft and call merge_and_unload() instead")
    for key, why in _UNSTREAMABLE.items():
        if config.get(key):
            return f"{key} is set: {why}; merge it with peft's merge_and_unload() instead"
    if config.get("use_alora") or config.get("alora_invocation_tokens"):
        return "activated LoRA (aLoRA) depends on the input tokens and cannot be merged into weights"
    return None


def adapter_plan(adapter: AdapterFiles) -> AdapterPlan:
    lora: dict[str, list[str]] = {}
    copies: dict[str, str] = {}
    for key in adapter.tensors:
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        match = _LORA_PART.match(name)
        if match:
            lora.setdefault(match["module"], []).append(key)
        else:
            copies[_SAVED_COPY.sub("", name)] = key
    return AdapterPlan({m: ModuleDelta(m, tuple(sorted(k))) for m, k in sorted(lora.items())}, copies)


def checkpoint_name(base: Base, model_name: str, prefix: Optional[str]) -> Optional[str]:
    """The base checkpoint's name for a model parameter: the same, or without the base model prefix
    (old checkpoints such as gpt2's were saved from the bare transformer)."""
    if base.find(model_name) is not None:
        return model_name
    if prefix and model_name.startswith(prefix + "."):
        short = model_name[len(prefix) + 1:]
        if base.find(short) is not None:
            return short
    return None
