"""Which base tensors an adapter changes, read from file headers only (no torch).

peft saves a LoRA adapter's tensors under the module they adapt, prefixed by the PeftModel wrapper:
`base_model.model.<module>.lora_A.weight`, `...lora_embedding_A`, `...lora_magnitude_vector` (DoRA),
`...base_layer.weight` (an embedding saved whole, e.g. with a resized vocabulary), and full copies
of modules_to_save as `base_model.model.<module>.<param>`. Here they are grouped per module and tied
to the base checkpoint's tensor names, so that the stream knows, before it writes a byte, the name,
dtype and shape of every tensor of the output (a safetensors header must precede its data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import (
    MergeRefused,  # noqa: F401  (run.py raises it as plan.MergeRefused)
    UnusableInput,
)
from peftdoctor.io.safetensors import Header, HeaderError, TensorInfo, read_header, size_problems
from peftdoctor.model.adapter import SAFETENSORS_NAME, Adapter
from peftdoctor.model.base import INDEX_NAME, SINGLE_NAME, Base
from peftdoctor.peft import tensor_names

PREFIX = tensor_names.PREFIX
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
class BaseLayout:
    """The base (model/base.py) with every shard's header: where each tensor's bytes are."""

    model: Base
    shards: tuple[BaseShard, ...]
    locations: dict[str, tuple[BaseShard, TensorInfo]] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        assert self.model.directory is not None  # open_base always has one; only check's config-only Base lacks it
        return self.model.directory

    @property
    def display(self) -> str:
        return self.model.display

    @property
    def config(self) -> dict[str, Any]:
        return self.model.config

    @property
    def sharded(self) -> bool:
        return self.model.sharded

    def find(self, name: str) -> Optional[tuple[BaseShard, TensorInfo]]:
        return self.locations.get(name)


@dataclass(frozen=True)
class ModuleDelta:
    """The adapter tensors for one adapted module (LoRA), keyed as saved."""

    module: str  # module path in the model, e.g. model.layers.0.self_attn.q_proj
    keys: tuple[str, ...]


@dataclass(frozen=True)
class AdapterPlan:
    lora: dict[str, ModuleDelta] = field(default_factory=dict)  # module -> its LoRA tensors
    copies: dict[str, str] = field(default_factory=dict)  # model parameter name -> saved adapter key


def read_layout(base: Base) -> BaseLayout:
    """Every shard's header; a damaged shard, or a base without safetensors shards, is unusable input."""
    names = base.safetensors_files
    if not names:
        raise UnusableInput(f"{base.display}: no {SINGLE_NAME} or {INDEX_NAME}: only safetensors bases can be streamed")
    shards = tuple(_shard(base.directory / n, base.display) for n in names)  # type: ignore[operator]
    locations = {info.name: (shard, info) for shard in shards for info in shard.tensors}
    return BaseLayout(base, shards, locations)


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


def require_weights(adapter: Adapter) -> None:
    """The stream reads adapter_model.safetensors only, and only a complete one."""
    if SAFETENSORS_NAME not in adapter.weight_files:
        raise UnusableInput(f"{adapter.display}: no {SAFETENSORS_NAME}; streaming merge reads safetensors adapters "
                            "only (a pickled adapter_model.bin is never unpickled)")
    if adapter.header is None:
        raise UnusableInput(f"{adapter.display}: {SAFETENSORS_NAME} {adapter.header_error}")
    problems = size_problems(adapter.header)
    if problems:
        raise UnusableInput(f"{adapter.display}: {SAFETENSORS_NAME}: {problems[0]}")


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


# Weight findings (rules/weights.py, rules/values.py) that make a merge impossible or dishonest: peft
# fails to load the adapter (a rank that does not fit its weights, ZeRO-3's empty tensors), NaN weights
# poison the model, and an untrained adapter "merges" into a copy of the base. --allow-noop lets the last
# through, never the others.
_REFUSED_WEIGHTS = ("PD206", "PD214", "PD211", "PD212")


def weights_refusal(adapter: Adapter, allow_noop: bool) -> Optional[str]:
    """Why the adapter's weights forbid a merge (check's finding, one line), or None."""
    from peftdoctor.rules.weights import weight_findings

    findings, _ = weight_findings(adapter, adapter.config)
    for code in _REFUSED_WEIGHTS:
        for finding in findings:
            if finding.code == code and not (code == "PD212" and allow_noop):
                extra = "; pass --allow-noop to write a copy of the base anyway" if code == "PD212" else ""
                return f"{finding.code}: {finding.message} ({finding.fix}){extra}"
    return None


def adapter_plan(adapter: Adapter) -> AdapterPlan:
    """The adapter's tensors as the stream uses them (tensor_names' grammar): per-module LoRA groups
    (A, B, DoRA magnitudes, a layer saved whole), and full copies of base parameters (modules_to_save)."""
    lora: dict[str, list[str]] = {}
    copies: dict[str, str] = {}
    for key, name in adapter.tensors.items():
        if name.family in ("lora", "dora", "whole"):
            lora.setdefault(name.module, []).append(key)
        else:
            copies[name.base_parameter] = key
    return AdapterPlan({m: ModuleDelta(m, tuple(sorted(k))) for m, k in sorted(lora.items())}, copies)


def module_inputs(module: str, params: dict[str, Any], saved: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base parameters and the adapter tensors peft reads for `module` (`saved` keyed as saved, may hold
    other modules' too): a layer saved whole (an embedding with a resized vocabulary) replaces the base's
    weight, as peft loads it. Used by the stream and by verify's judge of merged models alike."""
    prefix = f"{PREFIX}{module}."
    mine = {k: v for k, v in saved.items() if k.startswith(prefix)}
    whole = mine.pop(f"{prefix}base_layer.weight", None)
    if whole is not None:
        params = {**params, "weight": whole.to(params["weight"].dtype)}
    return params, mine


def checkpoint_name(base: BaseLayout, model_name: str, prefix: Optional[str]) -> Optional[str]:
    """The base checkpoint's name for a model parameter: the same, or without the base model prefix
    (old checkpoints such as gpt2's were saved from the bare transformer)."""
    if base.find(model_name) is not None:
        return model_name
    if prefix and model_name.startswith(prefix + "."):
        short = model_name[len(prefix) + 1:]
        if base.find(short) is not None:
            return short
    return None
