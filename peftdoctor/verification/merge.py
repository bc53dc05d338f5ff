"""Fold the adapter into the base's weights without losing what it learned.

Two traps are handled here. A tied output layer shares its Parameter with the input embedding, so
peft's in-place merge of an adapted lm_head also rewrites the embedding (and a saved model that
re-ties on reload throws one trained matrix away): such a model is untied before merging. And a
merge in half precision rounds small adapter deltas away: the caller merges in float32 and casts.
"""
from __future__ import annotations

from typing import Any, Optional

from peftdoctor.errors import message_line
from peftdoctor.model.adapter import Adapter
from peftdoctor.verification import facts as adapter_facts
from peftdoctor.verification.base import module_name


class MergeNotFinite(Exception):
    """peft's safe_merge found NaN or infinite values in a merged weight."""


def tied_and_adapted(model: Any, adapter: Adapter) -> Optional[tuple[str, str]]:
    """(input, output) embedding module names when they share weights and the adapter touches one."""
    inputs = model.get_input_embeddings()
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if inputs is None or outputs is None or getattr(outputs, "weight", None) is not inputs.weight:
        return None
    names = (module_name(model, inputs), module_name(model, outputs))
    if names[0] is None or names[1] is None or not any(adapter_facts.mentions(adapter, n) for n in names):
        return None
    return names[0], names[1]


def untie(model: Any) -> None:
    """Give the output layer its own copy of the shared matrix and record that in the config, so
    that neither the merge nor a reload ties the two trained matrices back into one."""
    import torch

    outputs = model.get_output_embeddings()
    outputs.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    configs = {id(model.config): model.config}
    if hasattr(model.config, "get_text_config"):
        text = model.config.get_text_config()
        configs[id(text)] = text
    for config in configs.values():
        config.tie_word_embeddings = False


def merge(peft_model: Any) -> Any:
    """merge_and_unload with peft's NaN check; raises MergeNotFinite when a merged weight is not finite."""
    import torch

    try:
        merged = peft_model.merge_and_unload(safe_merge=True)
    except ValueError as exc:
        if "nan" in str(exc).lower():
            raise MergeNotFinite(message_line(str(exc))) from None
        raise
    # safe_merge checks only the layers peft merges; modules_to_save copies are checked here.
    bad = [name for name, p in merged.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise MergeNotFinite(f"non-finite values in {', '.join(bad[:3])}" + (" ..." if len(bad) > 3 else ""))
    return merged
