"""When the merge needs no model class: then neither transformers nor peft is imported (seconds saved).

The base's model class (merge/layer.py's skeleton, built by transformers) tells three things the
safetensors headers do not: which weights are tied, the checkpoint's name prefix, and each layer's
type. The header layout (run._header_layout) already fails where a name needs the prefix. The rest
is safe to skip when:
- every changed tensor is a plain LoRA pair (merge/delta.py computes it) on a 2-D weight;
- no changed tensor has a vocabulary-sized dimension and no module is an embedding: in transformers
  models, tied weights are the input and output embeddings (and encoder/decoder copies of them);
- the base's model type uses no transformers Conv1D (its weights are stored transposed, and a
  square one cannot be told from an nn.Linear by shape), and the config does not ask for
  fan_in_fan_out, and the base is no remote-code model (its class is unknown anyway);
Anything else builds the skeleton as before; tests/test_merge_delta.py holds CONV1D_MODEL_TYPES
against transformers' own modeling files.
"""
from __future__ import annotations

from typing import Any, Optional

from peftdoctor.merge import delta as D
from peftdoctor.merge import plan as P

# config.model_type of the transformers models whose modeling file uses pytorch_utils.Conv1D.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_decoder",
                                "clvp_encoder", "convbert"})


def needs_model_class(base: P.BaseLayout, plan: P.AdapterPlan, config: dict[str, Any],
                      layout: Optional[tuple[Any, ...]]) -> Optional[str]:
    """Why the merge must build the base's model class, or None when the headers say enough."""
    if layout is None:
        return "the output layout needs the model class"
    base_config = base.config
    model_type = base_config.get("model_type")
    if not isinstance(model_type, str) or model_type in CONV1D_MODEL_TYPES or "auto_map" in base_config:
        return f"model type {model_type!r}"
    text = base_config.get("text_config")
    if isinstance(text, dict) and (text.get("model_type") in CONV1D_MODEL_TYPES):
        return f"model type {text.get('model_type')!r}"
    if config.get("fan_in_fan_out"):
        return "fan_in_fan_out"
    problem = D.config_problem(config)
    if problem:
        return problem
    vocab = base.model.vocab_size
    if vocab is None:
        return "no vocab_size"
    for module, group in plan.lora.items():
        relative = {key[len(f"{P.PREFIX}{module}."):] for key in group.keys}
        if relative != set(D.PAIRS["linear"]):
            return f"{module}: saved tensors {sorted(relative)}"
        found = base.find(f"{module}.weight")
        if found is None or len(found[1].shape) != 2 or vocab in found[1].shape:
            return f"{module}: weight shape"
    for name in plan.copies:
        found = base.find(name)
        if found is None or vocab in found[1].shape:
            return f"{name}: copy"
    return None
