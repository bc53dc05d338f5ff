"""Merge one module's LoRA delta with peft's own code, so every variant peft supports stays exact.

For each adapted module a throw-away model is built that holds only that module, at its real
path (so peft's target, rank_pattern and alpha_pattern matching see the same name), with the
module's real class taken from a skeleton of the base built on the meta device (so GPT-2's Conv1D
gets fan_in_fan_out and embeddings get peft's Embedding layer, exactly as in the full model). The
adapter is then loaded the way PeftModel.from_pretrained does it (wrap, cast, load the state dict,
cast again) and merged with merge_and_unload(). torch, transformers and peft are imported here only.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import message_line
from peftdoctor.peft import targeting
from peftdoctor.peft.semantics import AUTO_CLASS_BY_TASK

ADAPTER_NAME = "default"


@dataclass(frozen=True)
class Skeleton:
    """The base model's structure without its weights."""

    model: Any  # an nn.Module on the meta device, or None when it cannot be built here
    prefix: Optional[str]  # base_model_prefix ("model", "transformer", ...)
    tied: tuple[tuple[str, ...], ...]  # groups of parameter names that share one tensor
    note: Optional[str] = None


# What the safetensors headers alone say about the structure: no class, no prefix, no ties.
HEADERS_ONLY = Skeleton(None, None, ())


def load_skeleton(base_dir: Path, task_type: Optional[str], *, trust_remote_code: bool) -> Skeleton:
    """The base's structure from its config.json. A base that ships its own code (auto_map) runs it only
    with `trust_remote_code` (--trust-remote-code); else it falls back to shapes. Passed explicitly to
    every call: left unset, transformers asks on stdin for a model type it does not know ("y" runs the
    code, an open stdin stalls 15 s)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(str(base_dir), local_files_only=True,
                                                         trust_remote_code=trust_remote_code)
        cls = getattr(transformers, AUTO_CLASS_BY_TASK.get(task_type or "", "AutoModel"))
        with torch.device("meta"):
            model = cls.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure means "no skeleton", never a crash
        why = ("it ships its own model code, which runs only with --trust-remote-code"
               if "trust_remote_code" in str(exc) and not trust_remote_code else message_line(str(exc)))
        return Skeleton(None, None, (), f"the base's model class could not be built ({why}); "
                                        "layer types were inferred from shapes and fan_in_fan_out")
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    tied = tuple(tuple(names) for names in groups.values() if len(names) > 1)
    return Skeleton(model, getattr(model, "base_model_prefix", None) or None, tied)


def peft_config(adapter_dir: Path) -> Any:
    """The adapter's LoraConfig as PeftModel.from_pretrained reads it (unknown keys dropped)."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    return config


def _layer(skeleton: Skeleton, module: str, params: dict[str, Any], fan_in_fan_out: bool, embedding: bool) -> Any:
    """The base module `module`, holding the real `params` (weight, bias) and nothing else heavy."""
    import torch

    weight = params["weight"]
    found = None
    if skeleton.model is not None:
        try:
            found = skeleton.model.get_submodule(module)
        except AttributeError:
            found = None
    if found is not None:
        layer = copy.deepcopy(found)
        meta = {n for n, p in layer.named_parameters(recurse=False) if n not in params}
        state = {n: t for n, t in params.items() if hasattr(layer, n)}
        layer.load_state_dict(state, strict=False, assign=True)
        if meta:  # parameters the merge does not read (e.g. a bias without lora_bias): empty
            for name in meta:
                current = getattr(layer, name)
                setattr(layer, name, torch.nn.Parameter(torch.empty_like(current, device=weight.device),
                                                        requires_grad=False))
        _fill_buffers(skeleton.model, found, layer, weight.device)
    elif embedding:
        layer = torch.nn.Embedding(*weight.shape, _weight=weight, _freeze=True)
    elif fan_in_fan_out and weight.dim() == 2:
        from transformers.pytorch_utils import Conv1D

        layer = Conv1D(weight.shape[1], weight.shape[0])
        layer.load_state_dict(_with_bias(params, weight.shape[1]), assign=True)
    elif weight.dim() == 2:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in params)
        layer.load_state_dict(params, assign=True)
    else:
        raise ValueError(f"{module}: a {weight.dim()}-D weight needs the base's model class to know its layer type")
    for param in layer.parameters():
        param.requires_grad_(False)
    return layer


def _fill_buffers(model: Any, found: Any, layer: Any, device: Any) -> None:
    """Give `layer` the buffers a checkpoint does not hold (non-persistent ones, such as Gemma's embed_scale
    = sqrt(hidden_size)), which the meta skeleton holds without values: the values transformers' own
    _init_weights gives them when it materialises a model, taken from a throw-away copy (whose weights it
    re-initialises, hence not `layer` itself)."""
    empty = [name for name, buffer in layer.named_buffers() if buffer.is_meta]
    if not empty:
        return
    fresh = copy.deepcopy(found).to_empty(device=device)
    fresh.apply(model._init_weights)
    for name in empty:
        owner, _, leaf = name.rpartition(".")
        layer.get_submodule(owner)._buffers[leaf] = fresh.get_buffer(name)


def _with_bias(params: dict[str, Any], size: int) -> dict[str, Any]:
    import torch

    return params if "bias" in params else {**params, "bias": torch.zeros(size, dtype=params["weight"].dtype)}


def _container(module: str, layer: Any) -> Any:
    """A model whose only leaf is `layer`, at the dotted path `module`."""
    import torch

    root = torch.nn.Module()
    parent = root
    parts = module.split(".")
    for part in parts[:-1]:
        child = torch.nn.Module()
        parent.add_module(part, child)
        parent = child
    parent.add_module(parts[-1], layer)
    return root


def merge_module(skeleton: Skeleton, config: Any, module: str, params: dict[str, Any],
                 adapter_tensors: dict[str, Any], device: str) -> dict[str, Any]:
    """The module's parameters after peft merges the adapter into them, on the CPU.

    params: the base module's weight (and bias) in the dtype the merged model is built in;
    adapter_tensors: the adapter's saved tensors for this module, keyed as saved.
    """

    import torch

    with warnings.catch_warnings():
        # peft warns about what it sees in the one-module model (rank_pattern keys matching other
        # modules, ...): true of the stand-in, misleading about the adapter; `check` covers the adapter.
        warnings.simplefilter("ignore")
        merged = adapted_model(skeleton, config, module, params, adapter_tensors, device).merge_and_unload()
    leaf = merged.get_submodule(module)
    with torch.no_grad():
        return {n: leaf.get_parameter(n).detach().to("cpu") for n in params}


def adapted_model(skeleton: Skeleton, config: Any, module: str, params: dict[str, Any],
                  adapter_tensors: dict[str, Any], device: str) -> Any:
    """A PeftModel over a model holding only `module`, adapted as PeftModel.from_pretrained adapts it:
    what merge_module merges, and what verify (verification/layerwise.py) runs its probe through."""
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict

    config = copy.deepcopy(config)
    config.modules_to_save = None  # full copies are written by the stream, not wrapped here
    if targeting.names_all_linear(config.target_modules):  # resolving it needs the whole model; the weights say which
        config.target_modules = {module}
    on_device = {n: t.to(device) for n, t in params.items()}
    embedding = any(".lora_embedding_" in k for k in adapter_tensors)
    layer = _layer(skeleton, module, on_device, bool(config.fan_in_fan_out), embedding)
    container = _container(module, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in merge_module: warnings about the one-module stand-in
        # The order PeftModel.from_pretrained follows: inject, cast, load the weights, cast again.
        wrapped = PeftModel(container, config, adapter_name=ADAPTER_NAME, autocast_adapter_dtype=True)
        result = set_peft_model_state_dict(wrapped, adapter_tensors, adapter_name=ADAPTER_NAME)
        unexpected = [k for k in result.unexpected_keys if k.startswith("base_model.")]
        if unexpected:
            raise ValueError(f"{module}: peft did not use the adapter tensors {unexpected[:2]}")
        wrapped.base_model._cast_adapter_dtype(adapter_name=ADAPTER_NAME, autocast_adapter_dtype=True)
    wrapped.eval()
    return wrapped
