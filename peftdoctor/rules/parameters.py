"""target_parameters (peft 0.17+: LoRA on bare parameters, the fused MoE experts of transformers 5) against the
base's parameters in the module tables (PD229, PD221).

peft wraps each matched parameter of a module in a ParamWrapper, in target_parameters order, each around the
previous one: the last one listed is the module itself and each earlier one sits one `.base_layer` deeper, which
is how the saved keys name them (`mlp.experts.lora_A.weight` for down_proj, `mlp.experts.base_layer.lora_A.weight`
for gate_up_proj). A 3-d parameter [experts, d1, d2] gets lora_A [r * experts, in] and lora_B [out, r * experts],
{in, out} being {d1, d2} (which is which depends on the peft release and the experts' layout).
"""
from __future__ import annotations

from typing import Any

from peftdoctor.model.adapter import SAFETENSORS_NAME
from peftdoctor.model.findings import Finding
from peftdoctor.peft import architectures
from peftdoctor.peft.architectures import Architecture
from peftdoctor.rules import Context
from peftdoctor.rules.registry import rule

BASE_LAYER = ".base_layer"


def parameter_findings(ctx: Context, arch: Architecture, source: str) -> list[Finding]:
    targets = ctx.config.get("target_parameters")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        return []
    matched = {t: [p for p in arch.parameters if _matches(p, t)] for t in targets}
    missing = sorted(t for t, found in matched.items() if not found)
    findings = []
    if missing:
        have = ", ".join(sorted(arch.parameters)) or "none"
        findings.append(rule("PD229").finding(
            f"target_parameters {missing} match no parameter of the base ({source}; its fused parameters: {have}): "
            "peft leaves them unadapted, or raises when nothing else is targeted",
            "load the adapter under the transformers it was trained with (fused experts came with transformers 5), "
            "or retrain with this base's parameter names", key="target_parameters"))
    wrong = _shapes(ctx, arch, [t for t in targets if matched[t]])
    if wrong:
        findings.append(rule("PD221").finding(
            f"the adapter's target_parameters shapes disagree with the base's parameters ({source}): "
            f"{'; '.join(wrong[:3])}: peft raises a size mismatch on load",
            "load the adapter on the base it was trained for (base_model_name_or_path)", file=SAFETENSORS_NAME))
    return findings


def _matches(parameter: str, target: str) -> bool:
    return parameter == target or parameter.endswith("." + architectures.fold(target))


def _shapes(ctx: Context, arch: Architecture, targets: list[str]) -> list[str]:
    r = ctx.config.get("r") if not ctx.config.get("rank_pattern") else None  # a pattern may change it per module
    wrong = []
    for key, name in ctx.adapter.tensors.items():
        if name.role not in ("lora_A", "lora_B") or name.param != "weight":
            continue
        module = architectures.fold(name.module)
        depth = 0
        while module.endswith(BASE_LAYER):
            module, depth = module[:-len(BASE_LAYER)], depth + 1
        held = [p for p in arch.parameters if p.rpartition(".")[0] == module]
        stacked = [t for t in targets if any(_matches(p, t) for p in held)]
        if depth >= len(stacked):
            continue
        parameter = next(p for p in held if _matches(p, stacked[-1 - depth]))
        problem = _mismatch(name.role, ctx.adapter.shape_of(key), arch.parameter_shape(parameter), r)
        if problem is not None:
            wrong.append(f"{parameter}: {problem}")
    return sorted(set(wrong))


def _mismatch(role: str, shape: tuple[int, ...], base: Any, r: Any) -> str | None:
    if base is None or len(base) != 3 or len(shape) != 2:
        return None
    experts, dims = base[0], {base[1], base[2]}
    ranked, features = (shape[0], shape[1]) if role == "lora_A" else (shape[1], shape[0])
    if isinstance(r, int) and ranked != r * experts:
        return f"{role} holds {ranked} rows of rank, not r * experts = {r} * {experts}"
    if features not in dims:
        return f"{role} has {features} features, the parameter {list(base)} has {' or '.join(map(str, sorted(dims)))}"
    return None
