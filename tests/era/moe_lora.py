"""Run inside a side-by-side peft env: save a LoRA adapter for a tiny MoE model as that era trains one.

argv: one JSON list of [kind ("mixtral" or "qwen2_moe"), output directory, config kwargs]. Each model is built
from the small config given (tests/test_verify_load_only.py, MOE_CONFIGS), in this era's module layout
(transformers 4.x: one nn.Linear per expert), LoRA on q_proj and the MLP projections of every expert (and
Qwen2-MoE's shared expert), the adapter weights perturbed with a seeded generator so that lora_B is not zero.
Prints the trainable parameters' count per adapter.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

transformers.logging.set_verbosity_error()
classes = {"mixtral": ("MixtralConfig", "MixtralForCausalLM", ["q_proj", "w1", "w2", "w3"]),
           "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", ["q_proj", "gate_proj", "up_proj", "down_proj"])}


def save(kind: str, out: str, config: dict) -> int:
    config_class, model_class, targets = classes[kind]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(out)
    return len([n for n, p in model.named_parameters() if p.requires_grad])


print(json.dumps({out: save(kind, out, config) for kind, out, config in json.loads(sys.argv[1])}))
