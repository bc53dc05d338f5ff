"""The grammar of peft's saved tensor names: one parser for every layout peft releases have written.

`get_peft_model_state_dict` saves each adapter tensor under the module it adapts, prefixed by the
PeftModel wrapper and with the adapter's name removed (peft/utils/save_and_load.py):

    base_model.model.<module>.lora_A.weight             LoRA A (lora_B, lora_embedding_A/B likewise)
    base_model.model.<module>.lora_B.bias               lora_bias (0.14+)
    base_model.model.<module>.lora_magnitude_vector     DoRA, 0.9-0.11 (a Parameter)
    base_model.model.<module>.lora_magnitude_vector.weight   DoRA, 0.12+ (a module)
    base_model.model.<module>.base_layer.weight         a layer saved whole (an embedding with a resized vocabulary)
    base_model.model.<module>.token_adapter.trainable_tokens_delta   trainable tokens (0.15+)
    base_model.model.<module>.modules_to_save.<adapter>.weight       modules_to_save copies (old releases)
    base_model.model.<module>.weight                    modules_to_save copies (what newer releases save)

State dicts saved by hand keep the adapter name (`lora_A.default.weight`); 0.2-era MergedLinear uses
the same role names over fused weights. A name that fits none of these is an `other` tensor: a full
copy of a base parameter. Parsing splits on dots (linear time on hostile names), never a regex.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PREFIX = "base_model.model."
# role -> (family, what it holds). The family says which rules read it; "whole" roles replace base tensors.
ROLES: dict[str, str] = {
    "lora_A": "lora", "lora_B": "lora", "lora_embedding_A": "lora", "lora_embedding_B": "lora",
    "lora_magnitude_vector": "dora", "base_layer": "whole", "token_adapter": "tokens", "modules_to_save": "copy",
    "ia3_l": "ia3", "hada_w1_a": "loha", "hada_w1_b": "loha", "hada_w2_a": "loha", "hada_w2_b": "loha",
    "hada_t1": "loha", "hada_t2": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr", "lokr_w1_b": "lokr",
    "lokr_w2": "lokr", "lokr_w2_a": "lokr", "lokr_w2_b": "lokr", "lokr_t2": "lokr",
}
PARAMS = frozenset({"weight", "bias", "trainable_tokens_delta"})
A_ROLES = ("lora_A", "lora_embedding_A")
B_ROLES = ("lora_B", "lora_embedding_B")


@dataclass(frozen=True)
class TensorName:
    """One saved tensor name, parsed."""

    key: str  # as saved
    module: str  # the adapted (or copied) module's path in the base model, without the PeftModel prefix
    role: str  # a key of ROLES, or "other" (a full copy of a base parameter)
    param: str  # "weight", "bias", "trainable_tokens_delta", or "" (a bare Parameter such as 0.9's magnitude)
    adapter_name: Optional[str] = None  # kept in hand-saved state dicts ("default"); peft's own saves drop it

    @property
    def family(self) -> str:
        return ROLES.get(self.role, "other")

    @property
    def is_lora(self) -> bool:
        return self.family == "lora"

    @property
    def prefixed(self) -> bool:
        """Saved under the PeftModel prefix: PeftModel.load_state_dict(strict=False) matches only such keys."""
        return self.key.startswith(PREFIX)

    @property
    def prefix_doubled(self) -> bool:
        """Saved as base_model.model.base_model.model.<module> (a PeftModel's state dict saved through another
        wrapper): no module of the base has that path."""
        return self.prefixed and self.module.startswith(PREFIX)

    @property
    def saved_module(self) -> str:
        """The module as named in the file, PeftModel prefix included (engines match on that layout)."""
        return PREFIX + self.module if self.key.startswith(PREFIX) else self.module

    @property
    def base_parameter(self) -> str:
        """The base model parameter this tensor stands for when it is a full copy (role other/copy/whole)."""
        return f"{self.module}.{self.param}" if self.param else self.module


def strip_prefix(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def parse(key: str) -> TensorName:
    """Parse a saved tensor name; never fails (anything unrecognised is role "other")."""
    parts = strip_prefix(key).split(".")
    index = next((i for i in range(len(parts) - 1, 0, -1) if parts[i] in ROLES), None)
    if index is None:
        param = parts[-1] if len(parts) > 1 else ""
        return TensorName(key, ".".join(parts[:-1]) if len(parts) > 1 else parts[0], "other", param)
    rest = parts[index + 1:]
    param = rest.pop() if rest and rest[-1] in PARAMS else ""
    adapter_name = rest[0] if len(rest) == 1 else None
    return TensorName(key, ".".join(parts[:index]), parts[index], param, adapter_name)


def lora_rank(name: TensorName, shape: tuple[int, ...]) -> Optional[int]:
    """The rank a LoRA A/B tensor of this shape holds: A is [r, in] (embedding A: [r, vocab]), B is [out, r]
    (embedding B: [dim, r]); None for other roles, and for empty tensors (ZeRO-3 saves without gathering hold
    shape [0]: they carry no rank at all)."""
    if 0 in shape:
        return None
    if name.role in A_ROLES and name.param in ("weight", "") and len(shape) >= 1:
        return shape[0]
    if name.role in B_ROLES and name.param in ("weight", "") and len(shape) >= 2:
        return shape[1]
    return None


def modules(keys: "list[str] | tuple[str, ...] | dict") -> dict[str, list[TensorName]]:
    """Saved names grouped by the module they belong to, in first-seen order."""
    grouped: dict[str, list[TensorName]] = {}
    for key in keys:
        name = parse(key)
        grouped.setdefault(name.module, []).append(name)
    return grouped
