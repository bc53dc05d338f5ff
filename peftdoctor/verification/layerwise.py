"""What one adapted module must become, and what it computes, from peft's own code, one module at a time.

For a targeted module, `reference` returns what a correct merge holds (merge/layer.merge_module:
peft's merge on a model that holds only this module, so rsLoRA, rank/alpha patterns, DoRA, Conv1D
and embeddings are peft's), and what base + adapter compute on a seeded probe: random activations
of the layer's in_features (token ids for an embedding) through peft's unmerged forward. A merged
weight is then judged twice: element by element against the expected weight (judge.py), and by the
relative difference of its layer's output on the probe against the adapted output. Memory holds one
module's weights, never the model: this is how a base too large to load is verified.
torch and peft are imported inside the functions.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional

from peftdoctor.verification.judge import unit_roundoff

PROBE_SEED, PROBE_ROWS = 1234, 8


@dataclass
class Reference:
    module: str
    start: dict[str, Any]  # the base parameters the merge starts from (float32)
    expected: dict[str, Any]  # those parameters after peft merges the adapter (float32)
    spread: Any  # s·|B|·|A| in the weight's layout: the delta without cancellation
    rank: Optional[int]
    scaling: Optional[float]
    dora: bool
    layer: Any  # the base layer, to run merged parameters through
    probe: Any  # the probe input, or None where the layer takes no simple input (convolutions)
    adapted: Any  # peft's unmerged output on the probe


@dataclass(frozen=True)
class LayerParity:
    module: str
    max_abs: float
    scale: float  # max |adapted output|
    bound: float  # the largest output difference that rounding of the merged weight allows
    agree: int  # probe rows whose arg-max agrees
    rows: int
    within: bool  # every output element within its own bound

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else (0.0 if self.max_abs == 0 else math.inf)

    @property
    def tolerance(self) -> float:
        return self.bound / self.scale if self.scale > 0 else 0.0

    @property
    def passed(self) -> bool:
        return self.within


def reference(skeleton: Any, config: Any, module: str, params: dict[str, Any], adapter_tensors: dict[str, Any]) -> Reference:
    """Expected merged parameters (float32) and the adapted output on the probe for `module`."""
    from peftdoctor.merge.layer import merge_module

    start = {n: t.float() for n, t in params.items()}
    expected = merge_module(skeleton, config, module, {n: t.clone() for n, t in start.items()}, adapter_tensors, "cpu")
    leaf = _adapted(skeleton, config, module, {n: t.clone() for n, t in start.items()}, adapter_tensors)
    probe, adapted = _probe(leaf, module)
    name = _adapter_name()
    rank = getattr(leaf, "r", {}).get(name)
    scaling = getattr(leaf, "scaling", {}).get(name)
    dora = bool(getattr(leaf, "use_dora", {}).get(name))
    spread = _spread(leaf, expected["weight"], start["weight"])
    return Reference(module, start, {n: t.float() for n, t in expected.items()}, spread, rank,
                     float(scaling) if scaling is not None else None, dora, leaf.get_base_layer(), probe, adapted)


def _adapter_name() -> str:
    from peftdoctor.merge.layer import ADAPTER_NAME

    return ADAPTER_NAME


def _adapted(skeleton: Any, config: Any, module: str, params: dict[str, Any], adapter_tensors: dict[str, Any]) -> Any:
    """peft's adapted layer for `module`, built as merge/layer.py builds the one it merges."""
    from peftdoctor.merge.layer import adapted_model

    return adapted_model(skeleton, config, module, params, adapter_tensors, "cpu").base_model.model.get_submodule(module)


def _probe(leaf: Any, module: str) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(PROBE_SEED + zlib.crc32(module.encode()))
    base = leaf.get_base_layer()
    weight = base.weight
    if isinstance(base, torch.nn.Embedding):
        rows = int(weight.shape[0])
        probe = torch.randint(0, rows, (PROBE_ROWS,), generator=generator)
        probe[-1] = rows - 1  # the last row: where tokens added in training live
    elif weight.dim() == 2 and isinstance(getattr(leaf, "in_features", None), int):
        probe = torch.randn(PROBE_ROWS, leaf.in_features, generator=generator, dtype=torch.float32)
    else:
        return None, None
    with torch.no_grad():
        return probe, leaf(probe).float()


def _spread(leaf: Any, expected: Any, start: Any) -> Any:
    """s·|B|·|A| in the weight's layout: peft's own delta of the absolute factors (so fan_in_fan_out
    and embeddings are laid out as peft lays them out); |expected - start| where peft has no such delta."""
    import torch

    name = _adapter_name()
    try:
        with torch.no_grad():
            for attr in ("lora_A", "lora_B"):
                if name in getattr(leaf, attr, {}):
                    getattr(leaf, attr)[name].weight.abs_()
            for attr in ("lora_embedding_A", "lora_embedding_B"):
                if name in getattr(leaf, attr, {}):
                    getattr(leaf, attr)[name].abs_()
            spread = leaf.get_delta_weight(name).float().abs()
        if tuple(spread.shape) == tuple(expected.shape):
            return spread
    except (AttributeError, RuntimeError, TypeError, ValueError):
        pass
    return (expected - start).abs()


def output_parity(ref: Reference, merged: dict[str, Any], weight_bound: Any) -> Optional[LayerParity]:
    """The merged parameters' layer output on the probe against base + adapter (peft's unmerged forward).

    weight_bound: the rounding allowed at each element of the merged weight (judge.py); the output
    may then differ by the layer applied to |probe| with that bound as its weight, plus float32's own
    rounding of the forward (a dot product over in_features)."""
    import torch
    from torch.func import functional_call

    if ref.probe is None:
        return None
    layer = ref.layer
    own = {n: p.detach().float() for n, p in layer.named_parameters(recurse=False)}
    params = {**own, **{n: t.float() for n, t in merged.items() if n in own}}
    embedding = isinstance(layer, torch.nn.Embedding)
    probe_abs = ref.probe if embedding else ref.probe.abs()
    depth = 0 if embedding else int(ref.probe.shape[-1])
    u32 = unit_roundoff(torch.float32)
    forward_bound = (depth + 2) * u32 * (ref.expected["weight"].abs() + params["weight"].abs())
    zero = {n: torch.zeros_like(t) for n, t in own.items() if n != "weight"}
    with torch.no_grad():
        output = functional_call(layer, params, (ref.probe,)).float()
        bound = functional_call(layer, {**zero, "weight": weight_bound.float() + forward_bound}, (probe_abs,)).float()
    diff = (output - ref.adapted).abs()
    agree = int((output.argmax(-1) == ref.adapted.argmax(-1)).sum()) if output.dim() >= 1 and output.shape[-1] else 0
    return LayerParity(ref.module, float(diff.max()), float(ref.adapted.abs().max()),
                       float(bound.max()), agree, int(output.shape[0]) if output.dim() else 1,
                       bool((diff <= bound).all()))
