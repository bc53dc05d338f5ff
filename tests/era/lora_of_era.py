"""Run inside a side-by-side peft env: save LoRA adapters for tiny models as that era trains them.

argv: one JSON list of [config class, model class, config kwargs, target_modules, output directory]. Each model
is built from the small config given (tests/test_verify_load_only.py: ERA_MODELS), in this era's module layout
(transformers 4.x: one nn.Linear per MoE expert, Llava's vision tower under vision_model), LoRA r=2 on the
target modules, the adapter weights perturbed with a seeded generator so that lora_B is not zero.
Prints {output directory: the number of trainable tensors}.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

transformers.logging.set_verbosity_error()


def save(config_class: str, model_class: str, config: dict, targets: list, out: str) -> int:
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


print(json.dumps({job[-1]: save(*job) for job in json.loads(sys.argv[1])}))
