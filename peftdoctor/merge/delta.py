"""One module's LoRA delta with torch alone, in peft's exact operation order (no transformers, no peft).

What peft does for a plain LoRA layer, read from peft/tuners/lora/layer.py and tuners_utils.py:
- update_layer: r and lora_alpha from rank_pattern / alpha_pattern (get_pattern_key: the first
  pattern key k with re.match(rf"(.*\\.)?({k})$", name)), scaling = lora_alpha / r, or
  lora_alpha / math.sqrt(r) with use_rslora;
- _move_adapter_to_device_of_base_layer, then cast_adapter_dtype (autocast_adapter_dtype=True, the
  default of PeftModel.from_pretrained): lora_A/lora_B take the base layer's dtype, and float16 or
  bfloat16 are upcast to float32; the saved tensors are then copied into them (a rounding cast);
- Linear.get_delta_weight: transpose(B @ A, fan_in_fan_out) * scaling (fan_in_fan_out is True for
  transformers' Conv1D, False for nn.Linear, whatever the config says); Linear.merge:
  `weight.data += delta` (in the delta's float32: one rounding into a half weight);
- Embedding.get_delta_weight: transpose(B @ A, True) * scaling; Embedding.merge:
  `weight.data += delta.to(weight.dtype)` (the delta is rounded to a half weight's dtype first).
Half precision, as a consequence: a bfloat16/float16 merge rounds the base to the dtype, computes the
delta in float32 and rounds once more when adding (embeddings: the delta is rounded before the add),
so with u = eps/2 of the dtype a merged weight is within u * (|W| + |W + delta|) * (1 + u) of the exact
sum (plus the delta's float32 rounding; an embedding adds u * |delta|), where a float32 merge cast at
the end would be within u * |W + delta| (docs/commands/merge.md).
The same torch calls run here on the same inputs, so the results are the same bits (tests/
test_merge_delta.py holds this against peft's layer code for every variant). Everything else (DoRA,
lora_bias, other layer types, initialisations that touch the base) goes through merge/layer.py:
`plain()` says why a module needs it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from peftdoctor.peft import bounded

KINDS = ("linear", "conv1d", "embedding")
PAIRS = {"linear": ("lora_A.weight", "lora_B.weight"), "conv1d": ("lora_A.weight", "lora_B.weight"),
         "embedding": ("lora_embedding_A", "lora_embedding_B")}
WHOLE = "base_layer.weight"  # an embedding saved whole (resized vocabulary): the merge starts from it
# Config keys that do not change a plain merge here: what they select is decided elsewhere (targets,
# copies, refusals) or they only matter while training. Any other key must be unset (falsy).
_NEUTRAL = frozenset({
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "exclude_modules", "fan_in_fan_out",
    "inference_mode", "init_lora_weights", "layers_pattern", "layers_to_transform", "lora_alpha", "lora_dropout",
    "modules_to_save", "peft_type", "peft_version", "r", "rank_pattern", "revision", "target_modules", "task_type",
    "use_rslora", "megatron_core", "qalora_group_size", "loftq_config", "runtime_config", "eva_config",
    "corda_config", "layer_replication", "target_parameters", "trainable_token_indices"})
# init_lora_weights values that leave the base untouched when the adapter is loaded.
_PLAIN_INITS = (True, False, "gaussian")


@dataclass(frozen=True)
class PlainLora:
    """One module's LoRA as peft's layer holds it once loaded: A and B in the adapter dtype."""

    kind: str  # "linear" (nn.Linear), "conv1d" (transformers' Conv1D: fan_in_fan_out) or "embedding"
    A: Any  # torch.Tensor
    B: Any
    scaling: float


def config_problem(config: Mapping[str, Any]) -> Optional[str]:
    """Why the adapter's config needs peft's layer classes for every module, or None."""
    for key, value in config.items():
        if key == "init_lora_weights":
            if not any(value is v or (isinstance(v, str) and isinstance(value, str) and value.lower() == v)
                       for v in _PLAIN_INITS):
                return f"init_lora_weights={value!r}"
        elif key not in _NEUTRAL and value:
            return f"{key}={value!r}"
    return None


def pattern_value(patterns: Any, module: str, default: Any) -> Any:
    """peft's get_pattern_key + dict.get: the value of the first pattern key matching `module`."""
    if isinstance(patterns, Mapping):
        for key in patterns:
            if bounded.match(rf"(.*\.)?({key})$", module) is not None:  # re.error where peft's re fails too
                return patterns[key]
    return default


def rank_alpha_scaling(config: Mapping[str, Any], module: str) -> tuple[Any, Any, float]:
    """(r, lora_alpha, scaling) of `module` (its path in the base model) as update_layer sets them."""
    r = pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
    alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, alpha, scaling


def adapter_dtype(weight_dtype: Any) -> Any:
    """The dtype peft's lora_A/lora_B end up in next to a base weight of `weight_dtype`."""
    import torch

    if weight_dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return weight_dtype


def plain(config: Mapping[str, Any], module: str, tensors: Mapping[str, Any], weight: Any,
          kind: str) -> Union[PlainLora, str]:
    """The module's LoRA ready to merge with torch alone, or why peft's layer code must do it.

    tensors: the adapter's saved tensors for `module`, keyed relative to it ("lora_A.weight", ...);
    weight: the base weight (only its dtype and shape are read)."""
    import torch

    problem = config_problem(config)
    if problem:
        return problem
    if kind not in PAIRS:
        return f"layer type {kind}"
    a_key, b_key = PAIRS[kind]
    extra = set(tensors) - {a_key, b_key, WHOLE}
    if extra or a_key not in tensors or b_key not in tensors:
        return f"saved tensors {sorted(tensors)}"
    if not weight.dtype.is_floating_point or weight.dim() != 2:
        return f"a {weight.dim()}-D {weight.dtype} weight"
    try:
        r, _alpha, scaling = rank_alpha_scaling(config, module)
    except (re.error, TypeError, ValueError, ZeroDivisionError) as exc:
        return f"rank/alpha: {exc}"
    dtype = adapter_dtype(weight.dtype)
    A, B = tensors[a_key].to(dtype), tensors[b_key].to(dtype)
    rows, cols = (weight.shape[1], weight.shape[0]) if kind in ("conv1d", "embedding") else tuple(weight.shape)
    if A.dim() != 2 or B.dim() != 2 or not (A.shape[0] == B.shape[1] == r) or (B.shape[0], A.shape[1]) != (rows, cols):
        return f"shapes A {tuple(A.shape)}, B {tuple(B.shape)}, weight {tuple(weight.shape)}, r {r}"
    if torch.is_tensor(scaling):  # pragma: no cover - a config value is never a tensor
        return "scaling"
    return PlainLora(kind, A, B, scaling)


def delta(lora: PlainLora, pool: Any = None) -> Any:
    """get_delta_weight, line for line (lora.A/B already in the adapter dtype, on the merge device).
    pool: a merge/buffers.BufferPool for the product (CPU only); matmul's out= runs the same kernel."""
    import torch

    A, B = lora.A, lora.B
    half = B.dtype if A.device.type == "cpu" and B.dtype in (torch.float16, torch.bfloat16) else None
    if half is not None:  # never after autocast; kept as peft has it for adapters built otherwise
        A, B = A.float(), B.float()
    if pool is not None and A.device.type == "cpu":
        product = torch.matmul(B, A, out=pool.scratch((B.shape[0], A.shape[1]), B.dtype))
    else:
        product = B @ A
    # peft: transpose(B @ A, fan_in_fan_out) * scaling (transpose(..., True) for embeddings). Scaling in
    # place is the same correctly rounded product per element, without a second model-sized buffer.
    output = product.mul_(lora.scaling)
    if lora.kind != "linear":
        output = output.T
    return output.to(dtype=half) if half is not None else output


def merge_into(weight: Any, lora: PlainLora, pool: Any = None) -> Any:
    """Linear.merge / Embedding.merge (safe_merge=False): add the delta to `weight` in place (the
    product's memory taken from and given back to `pool` when one is given)."""
    change = delta(lora, pool)
    if lora.kind == "embedding":
        weight += change.to(weight.dtype)
    else:
        weight += change
    if pool is not None:
        pool.give(change)
    return weight


def merged_weight(config: Mapping[str, Any], module: str, tensors: Mapping[str, Any], weight: Any,
                  kind: str = "linear", pool: Any = None) -> Any:
    """`weight` (a new tensor) after peft merges the module's plain LoRA into it; ValueError where
    peft's layer code is needed (see plain()). For reuse by verification (layer-by-layer parity)."""
    start = tensors.get(WHOLE)
    start = weight.clone() if start is None else start.to(weight.dtype)
    lora = plain(config, module, tensors, start, kind)
    if isinstance(lora, str):
        raise ValueError(f"{module}: needs peft's layer code ({lora})")
    return merge_into(start, lora, pool)


def layer_kind(model: Any, config: Mapping[str, Any], module: str, tensors: Mapping[str, Any]) -> str:
    """The layer type peft wraps `module` in, in lora's dispatch_default order: "linear", "conv1d",
    "embedding", or another name (peft's layer code). `model`: the base model (e.g. on the meta
    device), or None, then as merge/layer.py guesses: embedding keys, else fan_in_fan_out."""
    layer = None
    if model is not None:
        try:
            layer = model.get_submodule(module)
        except AttributeError:
            layer = None
    if layer is None:
        if any(k.startswith("lora_embedding_") for k in tensors):
            return "embedding"
        return "conv1d" if config.get("fan_in_fan_out") else "linear"
    import torch
    from transformers.pytorch_utils import Conv1D  # a model was built, so transformers is imported already

    for cls, kind in ((torch.nn.Embedding, "embedding"), (torch.nn.Conv1d, "conv"), (torch.nn.Conv2d, "conv"),
                      (torch.nn.Conv3d, "conv"), (torch.nn.MultiheadAttention, "attention"),
                      (torch.nn.Linear, "linear"), (Conv1D, "conv1d")):
        if isinstance(layer, cls):
            return kind
    return type(layer).__name__


def module_tensors(adapter_tensors: Mapping[str, Any], module: str,
                   prefix: str = "base_model.model.") -> dict[str, Any]:
    """The saved tensors of `module`, keyed relative to it."""
    head = f"{prefix}{module}."
    return {k[len(head):]: v for k, v in adapter_tensors.items() if k.startswith(head)}
