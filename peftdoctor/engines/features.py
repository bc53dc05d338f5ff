"""Feature detectors: what an adapter uses that an inference engine may not serve as peft computes it.

Each detector reads the config and, where the config cannot say (a file trained with one config
and saved with another, VLM key layouts, real ranks), the safetensors header. It returns a short
detail for the finding, or None when the adapter does not use the feature. The engine tables
(`<engine>.json`) name these features; nothing here knows about any engine.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from peftdoctor.io.safetensors import Header
from peftdoctor.peft import semantics as keys
from peftdoctor.peft import targeting, tensor_names
from peftdoctor.peft.patterns import declared_ranks

Detector = Callable[[dict[str, Any], Optional[Header], Mapping[str, Any]], Optional[str]]

# The layout that engines which map weights by layer index expect (TGI: base_model.model.{weight_name}
# with weight_name "model.layers.{i}.self_attn.q_proj", server/text_generation_server/utils/adapter.py).
_DECODER_LAYER = re.compile(r"^base_model\.model\.model\.layers\.\d+\.")
_EMBEDDING_NAMES = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings", "shared")
_HEAD_NAMES = ("lm_head", "embed_out", "output")
_HEADS_FOR_CLASSIFICATION = ("classifier", "score")


def _lora_modules(header: Optional[Header]) -> dict[str, str]:
    """Module path (with the saved prefix) -> its last name, for every LoRA A/B tensor."""
    found: dict[str, str] = {}
    for key in header.tensors if header is not None else ():
        name = tensor_names.parse(key)
        if name.is_lora:
            found[name.saved_module] = name.module.rsplit(".", 1)[-1]
    return found


def _targets(config: dict[str, Any]) -> set[str]:
    """Last names of the modules target_modules lists; empty when only the base could tell (a regex,
    or all-linear: never the embeddings or the output head, and no fixed module names)."""
    return set(targeting.declared_names(config) or ())


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def any_adapter(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    return f"a {config.get('peft_type', 'PEFT')} adapter"


def not_lora(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    peft_type = config.get("peft_type")
    return None if peft_type == "LORA" else f"peft_type {peft_type!r}"


def rslora(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    if config.get("use_rslora") is not True:
        return None
    return f"use_rslora: peft scales by lora_alpha/sqrt(r) = {config.get('lora_alpha', 8)}/sqrt({config.get('r', 8)})"


def dora(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    if config.get("use_dora") is True:
        return "use_dora: true"
    if header is not None and any(".lora_magnitude_vector" in name for name in header.tensors):
        return "the weights hold DoRA magnitude vectors"
    return None


def modules_to_save(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    names = _names(config.get("modules_to_save"))
    return f"modules_to_save {names}" if names else None


def modules_to_save_non_head(config: dict[str, Any], header: Optional[Header],
                             params: Mapping[str, Any]) -> Optional[str]:
    others = [n for n in _names(config.get("modules_to_save")) if n not in _HEADS_FOR_CLASSIFICATION]
    return f"modules_to_save {others}" if others else None


def lora_bias(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    if config.get("lora_bias") is True:
        return "lora_bias: true"
    if header is not None and any(name.endswith(".lora_B.bias") for name in header.tensors):
        return "the weights hold lora_B biases"
    return None


def bias(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    value = config.get("bias")
    return f"bias {value!r}" if value not in (None, "none") else None


def adapter_rank(config: dict[str, Any], header: Optional[Header]) -> Optional[int]:
    """The largest rank any module of the adapter has: config r, rank_pattern, and the real shapes."""
    ranks = declared_ranks(config, default_r=None)
    for name, info in (header.tensors.items() if header is not None else ()):
        if name.endswith((".lora_A.weight", ".lora_A")) and len(info.shape) >= 2:
            ranks.append(info.shape[0])
    return max(ranks, default=None)


def rank_above_default(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    """params: default (the engine's default limit), allowed (values its limit flag accepts), server_flag,
    and max_lora_rank (the server's actual limit, a setting: replaces the default when given).
    A starting flag solves it, so `fix` need not refuse (see targets.refusals_for)."""
    rank, given = adapter_rank(config, header), params.get("max_lora_rank")
    limit = params["default"] if given is None else given
    fitting = [a for a in params["allowed"] if rank is not None and a >= rank]
    if rank is None or rank <= limit or not fitting:
        return None
    which = f"the default {params['server_flag']} {limit}" if given is None else \
        f"the server's {params['server_flag']} {limit}"
    return f"rank {rank} exceeds {which}: start the server with {params['server_flag']} {min(fitting)}"


def rank_above_server_limit(config: dict[str, Any], header: Optional[Header],
                            params: Mapping[str, Any]) -> Optional[str]:
    """params: server_flag, and max_lora_rank (the server's limit, a setting). An engine with no default limit
    (SGLang sizes its pool from the adapters given at start-up) can be judged only against a limit given."""
    rank, given = adapter_rank(config, header), params.get("max_lora_rank")
    if rank is None or given is None or rank <= given:
        return None
    return f"rank {rank} exceeds the server's {params['server_flag']} {given}: start the server with " \
           f"{params['server_flag']} {rank} or more"


def rank_above_max(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    """params: allowed (values the engine's rank limit accepts), server_flag."""
    rank = adapter_rank(config, header)
    if rank is None or rank <= max(params["allowed"]):
        return None
    return f"rank {rank} exceeds the largest {params['server_flag']} this release accepts ({max(params['allowed'])})"


def rank_pattern(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    used = [k for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    return f"{' and '.join(used)} set: some modules have their own rank or alpha" if used else None


def _lora_on(module_names: Sequence[str]) -> Detector:
    """A detector for LoRA on any of `module_names`: from the weights when readable, else the config."""
    def detect(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
        if header is not None:
            names = sorted({m for m, last in _lora_modules(header).items() if last in module_names})
            return f"LoRA on {', '.join(names)}" if names else None
        names = sorted(_targets(config) & set(module_names))
        return f"target_modules include {', '.join(names)}" if names else None

    return detect


embedding_lora = _lora_on(_EMBEDDING_NAMES)
lm_head_lora = _lora_on(_HEAD_NAMES)


def trainable_tokens(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    if config.get("trainable_token_indices"):
        return "trainable_token_indices set"
    if header is not None and any(".token_adapter." in name for name in header.tensors):
        return "the weights hold trainable token deltas"
    return None


def base_mutating_init(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    value = config.get("init_lora_weights")
    if isinstance(value, str) and value.lower().startswith(keys.BASE_MUTATING_INITS):
        return f"init_lora_weights {value!r} (saved unconverted: it assumes a modified base)"
    return None


def vlm_new_key_layout(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    """transformers>=4.52 nests VLM text models as model.language_model.*; older engines expect
    language_model.model.* and match nothing."""
    hits = [m for m in _lora_modules(header) if m.startswith("base_model.model.model.language_model.")]
    return f"{len(hits)} modules keyed as base_model.model.model.language_model.*" if hits else None


def _non_layer_modules(header: Optional[Header]) -> tuple[list[str], int]:
    modules = {m: last for m, last in _lora_modules(header).items()
               if last not in _EMBEDDING_NAMES + _HEAD_NAMES}
    outside = sorted(m for m in modules if not _DECODER_LAYER.match(m + "."))
    return outside, len(modules)


def keys_outside_decoder_layers(config: dict[str, Any], header: Optional[Header],
                                params: Mapping[str, Any]) -> Optional[str]:
    outside, total = _non_layer_modules(header)
    if total and len(outside) == total:
        return f"none of the {total} LoRA modules is keyed base_model.model.model.layers.N.* (e.g. {outside[0]})"
    return None


def some_keys_outside_decoder_layers(config: dict[str, Any], header: Optional[Header],
                                     params: Mapping[str, Any]) -> Optional[str]:
    outside, total = _non_layer_modules(header)
    if outside and len(outside) < total:
        return f"{len(outside)} of {total} LoRA modules are not keyed base_model.model.model.layers.N.* " \
               f"(e.g. {outside[0]})"
    return None


def target_modules_unsupported(config: dict[str, Any], header: Optional[Header],
                               params: Mapping[str, Any]) -> Optional[str]:
    """params: supported (module names the engine applies LoRA to)."""
    names = set(_lora_modules(header).values()) if header is not None else _targets(config)
    odd = sorted(names - set(params["supported"]) - set(_EMBEDDING_NAMES) - set(_HEAD_NAMES))
    return f"modules {', '.join(odd)} are not among {', '.join(params['supported'])}" if odd else None


def architecture_modules_unsupported(config: dict[str, Any], header: Optional[Header],
                                     params: Mapping[str, Any]) -> Optional[str]:
    """params: supported ({architecture: module names the engine builds LoRA layers for}), names_from
    ("weights": the safetensors keys, falling back to target_modules; "target_modules": the config only),
    fingerprints ({architecture: module names that, all present, identify it when the base cannot be read}),
    and base (the Base check found: --base or base_model_name_or_path; None when it was not found).
    An architecture absent from `supported` is not judged; an unknown base without a fingerprint is skipped."""
    if params.get("names_from") == "target_modules" or header is None:
        names = _targets(config)
    else:
        names = set(_lora_modules(header).values())
    if not names:
        return None
    base = params.get("base")
    architecture, how = (base.architecture if base is not None else None), "base config.json"
    if architecture is None:
        matches = [arch for arch, prints in (params.get("fingerprints") or {}).items() if set(prints) <= names]
        if len(matches) != 1:
            return None
        architecture, how = matches[0], f"module names {', '.join(sorted(params['fingerprints'][matches[0]]))}"
    supported = params["supported"].get(architecture)
    if supported is None:
        return None
    odd = sorted(names - set(supported))
    if not odd:
        return None
    have = ", ".join(supported) if supported else "no LoRA support for this architecture at all"
    return f"{architecture} (from the {how}): modules {', '.join(odd)}; supported: {have}"


def refused_key(config: dict[str, Any], header: Optional[Header], params: Mapping[str, Any]) -> Optional[str]:
    """params: key (a config key the engine refuses whenever it is set, e.g. layer_replication).
    Set means what the engine tests: a truthy value (`if self.layer_replication:`)."""
    value = config.get(params["key"])
    return f"{params['key']} {value!r}" if value else None


DETECTORS: dict[str, Detector] = {
    "any_adapter": any_adapter,
    "not_lora": not_lora,
    "rslora": rslora,
    "dora": dora,
    "modules_to_save": modules_to_save,
    "modules_to_save_non_head": modules_to_save_non_head,
    "lora_bias": lora_bias,
    "bias": bias,
    "rank_above_default": rank_above_default,
    "rank_above_max": rank_above_max,
    "rank_above_server_limit": rank_above_server_limit,
    "rank_pattern": rank_pattern,
    "embedding_lora": embedding_lora,
    "lm_head_lora": lm_head_lora,
    "trainable_tokens": trainable_tokens,
    "base_mutating_init": base_mutating_init,
    "vlm_new_key_layout": vlm_new_key_layout,
    "keys_outside_decoder_layers": keys_outside_decoder_layers,
    "some_keys_outside_decoder_layers": some_keys_outside_decoder_layers,
    "target_modules_unsupported": target_modules_unsupported,
    "architecture_modules_unsupported": architecture_modules_unsupported,
    "refused_key": refused_key,
}

# One finding code per feature (rules.py PD4xx), so SARIF and `rules` name what the engine trips on.
FEATURE_CODES: dict[str, str] = {
    "any_adapter": "PD401", "not_lora": "PD402", "dora": "PD403", "rslora": "PD404",
    "modules_to_save": "PD405", "modules_to_save_non_head": "PD405", "lora_bias": "PD406", "bias": "PD407",
    "rank_above_default": "PD408", "rank_above_max": "PD408", "rank_above_server_limit": "PD408",
    "rank_pattern": "PD409", "embedding_lora": "PD410", "lm_head_lora": "PD411",
    "trainable_tokens": "PD412", "base_mutating_init": "PD413", "vlm_new_key_layout": "PD414",
    "keys_outside_decoder_layers": "PD414", "some_keys_outside_decoder_layers": "PD415",
    "target_modules_unsupported": "PD415", "architecture_modules_unsupported": "PD416", "refused_key": "PD456",
}

# Config keys the features live in, for the finding's `key`.
FEATURE_KEYS: dict[str, Optional[str]] = {
    "not_lora": "peft_type", "rslora": "use_rslora", "dora": "use_dora", "modules_to_save": "modules_to_save",
    "modules_to_save_non_head": "modules_to_save", "lora_bias": "lora_bias", "bias": "bias", "rank_above_default": "r",
    "rank_above_max": "r", "rank_above_server_limit": "r", "rank_pattern": "rank_pattern",
    "embedding_lora": "target_modules", "lm_head_lora": "target_modules",
    "trainable_tokens": "trainable_token_indices", "base_mutating_init": "init_lora_weights",
    "target_modules_unsupported": "target_modules", "architecture_modules_unsupported": "target_modules",
}
