"""The adapter against its base, from the base's config.json and the generated module tables (PD220-PD222).

peft/architectures.py computes the base's layer sizes from config.json without torch; these rules compare
them with target_modules and with the adapter's saved shapes. The tables come from one transformers release
(architectures.json names it), so each message says which.
"""
from __future__ import annotations

from typing import Any, Optional

from peftdoctor.model.adapter import SAFETENSORS_NAME
from peftdoctor.model.findings import Finding
from peftdoctor.peft import architectures, targeting, tensor_names
from peftdoctor.peft.architectures import Architecture, Layer
from peftdoctor.peft.releases import Release
from peftdoctor.rules import Context
from peftdoctor.rules.parameters import parameter_findings
from peftdoctor.rules.registry import rule

SKIPPED = "base-aware checks (target modules, layer shapes, vocabulary) not run: "
# Layer indices tried against a regex target_modules: the tables fold every index into {i}.
_INDICES = tuple(str(i) for i in range(256))


def targets_module(module: str, targets: Any, release: Release) -> bool:
    """peft's target selection for one module name, by the one matcher (peft/targeting.py) for `release`;
    a pattern peft could not evaluate either counts as a match (its own error is not this rule's)."""
    try:
        return targeting.targeted({"target_modules": targets}, module, release.version)
    except targeting.PROBLEMS:
        return True


def base_findings(ctx: Context) -> tuple[list[Finding], list[str]]:
    """Findings of the adapter on ctx.base, and at most one `skipped` note saying why they could not run."""
    if ctx.base is None:
        return [], [SKIPPED + (ctx.base_note or "no base")]
    arch = architectures.for_config(ctx.base.config, ctx.transformers)
    if arch is None:
        why = architectures.skipped_reason(ctx.base.model_type, ctx.transformers)
        return [], [SKIPPED + f"{ctx.base.display}: " + why]
    return target_findings(ctx, arch) + shape_findings(ctx, arch) + parameter_findings(ctx, arch, _source(arch)), []


def _source(arch: Architecture) -> str:
    return f"{arch.model_type}: the modules of {arch.entry['class']} in transformers {arch.release}"


def target_findings(ctx: Context, arch: Architecture) -> list[Finding]:
    """PD220: no module of the base matches target_modules: peft raises NoMatchingPeftModuleError."""
    targets = ctx.config.get("target_modules")
    if not isinstance(targets, (str, list)) or not targets or targets == "all-linear":
        return []
    if isinstance(targets, list) and not all(isinstance(t, str) for t in targets):
        return []
    regex = isinstance(targets, str)
    folded = targets if regex else [architectures.fold(t) for t in targets]  # "layers.0.mlp" -> "layers.{i}.mlp"
    if any(targets_module(name, folded, ctx.target) for name in _expanded(arch.module_names, regex)):
        return []
    shown = targets if isinstance(targets, str) else sorted(targets)
    return [rule("PD220").finding(
        f"target_modules {shown!r} match no module of the base ({_source(arch)}): peft raises "
        "\"Target modules ... not found in the base model\"; the adapter was made for another architecture",
        "load the adapter on the base it was trained for (base_model_name_or_path), or retrain it with this "
        "base's module names", key="target_modules")]


def _expanded(names: tuple[str, ...], regex: bool) -> list[str]:
    """List targets match folded names as they are (suffixes); a regex needs real indices."""
    if not regex:
        return list(names)
    out = []
    for name in names:
        out += [name.replace("{i}", i) for i in _INDICES] if "{i}" in name else [name]
    return out


def shape_findings(ctx: Context, arch: Architecture) -> list[Finding]:
    """PD221 (layer sizes) and PD222 (the vocabulary): the adapter's saved shapes against the base's layers."""
    adapter = ctx.adapter
    embeddings = {n for n in (arch.input_embeddings, arch.output_embeddings) if n}
    wrong: dict[str, list[str]] = {}  # folded layer -> what disagrees
    vocab: list[str] = []
    for key, name in adapter.tensors.items():
        layer = arch.layer(name.module) if name.module else None
        if layer is None or layer.shape is None:
            continue
        shape = adapter.shape_of(key)
        problem = _mismatch(name, shape, layer)
        if problem is None:
            continue
        if layer.name in embeddings and _vocabulary_dim(name, shape, layer):
            vocab.append(f"{key} {list(shape)}")
        elif problem not in wrong.setdefault(layer.name, []):
            wrong[layer.name].append(problem)
    findings = []
    if vocab:
        expr = _vocab_expr(arch)
        size = arch.value(expr) if expr else None
        findings.append(rule("PD222").finding(
            f"{_some(vocab)} do not fit the base's vocabulary of {size} tokens ({_source(arch)}): tokens were "
            "added in training and peft raises a size mismatch on load",
            "resize the base first: base.resize_token_embeddings(<the adapter's vocabulary size>) (and load the "
            "tokenizer saved with the adapter), then load the adapter", file=SAFETENSORS_NAME))
    if wrong:
        where = ctx.base.display if ctx.base is not None else "the base"
        layers = [f"{layer}: {' and '.join(problems)}" for layer, problems in sorted(wrong.items())]
        findings.append(rule("PD221").finding(
            f"the adapter's shapes disagree with the layers of {where} ({_source(arch)}, sizes from its "
            f"config.json): {'; '.join(layers[:3])}{f' and {len(layers) - 3} more layers' if len(layers) > 3 else ''}"
            ": peft raises a size mismatch on load; the adapter was trained on a base of other sizes",
            "load the adapter on the base it was trained for (base_model_name_or_path)", file=SAFETENSORS_NAME))
    return findings


def _mismatch(name: tensor_names.TensorName, shape: tuple[int, ...], layer: Layer) -> Optional[str]:
    """What disagrees between one saved tensor and the base layer it belongs to, or None."""
    assert layer.shape is not None
    if name.family in ("other", "copy", "whole") and name.param == "weight":
        # a full copy of the base's weight (modules_to_save, a saved embedding): the same shape
        if tuple(shape) != layer.shape:
            return f"the saved weight is {list(shape)}, the base's is {list(layer.shape)}"
        return None
    in_out = layer.in_out
    if in_out is None or name.param not in ("weight", "") or name.family != "lora":
        return None
    base_in, base_out = in_out
    if name.role in tensor_names.A_ROLES and len(shape) >= 2 and shape[1] != base_in:
        return f"{name.role} takes {shape[1]} inputs, the base layer has {base_in}"
    if name.role == "lora_B" and len(shape) >= 1 and shape[0] != base_out:
        return f"lora_B gives {shape[0]} outputs, the base layer has {base_out}"
    if name.role == "lora_embedding_B" and len(shape) >= 1 and shape[0] != base_out:
        return f"lora_embedding_B gives {shape[0]} outputs, the base layer has {base_out}"
    return None


def _vocabulary_dim(name: tensor_names.TensorName, shape: tuple[int, ...], layer: Layer) -> bool:
    """Whether the mismatch of this tensor is in the vocabulary dimension of an embedding or LM head."""
    if name.family in ("other", "copy", "whole"):  # Embedding [vocab, dim], LM head [vocab, hidden]
        return bool(shape) and layer.shape is not None and shape[0] != layer.shape[0]
    if layer.kind == "Embedding":
        return name.role in tensor_names.A_ROLES
    return name.role == "lora_B"  # an LM head's outputs are the vocabulary


def _vocab_expr(arch: Architecture) -> Optional[str]:
    for name in (arch.input_embeddings, arch.output_embeddings):
        dims = arch.entry["modules"].get(name or "", [None, None])[1]
        if dims:
            return dims[0]
    return None


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
