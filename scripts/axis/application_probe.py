"""Run under one (peft, transformers) pair: what a loaded adapter computes, module by module.

    application_probe.py save DIR SIDE [CASE...]  # the tiny bases (4x) and this side's adapters, under DIR
    application_probe.py load DIR                 # load every saved adapter under this pair; print the outcomes

`save` under the 4.x side (SIDE "4x") builds each case's tiny base from a small config (seeded), saves it
as safetensors (DIR/<case>/base) and each adapter of the case (what a user trains: attention with the MLP or
experts), its lora_B random so that an applied adapter changes the logits (DIR/<case>/4x-<adapter>). Under
the 5.x side (SIDE "5x") it loads the saved base (transformers converts it) and saves the adapters written with
`target_parameters` (fused experts). Each adapter directory holds `expected.json`: the logits of the base
and of base + adapter on fixed token ids (and a 16-pixel image for Llava), as the writing pair computes them.

`load` reads each adapter with this pair (PeftModel.from_pretrained on the base from_pretrained) and says:
"adapter" (the logits are the writer's base + adapter), "base" (the adapter computes nothing), "partial"
(neither: part of it applies), or "fails" with the error text; with whether peft warned of missing or
unexpected keys, the saved modules, and the folded names of the modules whose loaded lora_B is not zero.
Prints one JSON object on its last line.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings

warnings.simplefilter("ignore")
import logging  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
IDS = [[1, 5, 9, 17, 33, 2, 44, 60], [3, 8, 21, 13, 55, 70, 7, 4]]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _text(**extra):
    return dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, **extra)


# case -> (config class, config kwargs, adapters: {name: LoraConfig kwargs}); written under transformers 4.x.
# Each adapter is what a user trains: attention and MLP (experts) together, so that a release that cannot place
# the experts still finds its target modules and loads the rest without an error.
CASES = {
    "llama": ("LlamaConfig", _text(), {"attention_mlp": {"target_modules": [*ATTENTION, "gate_proj", "up_proj",
                                                                            "down_proj"]}}),
    "mixtral": ("MixtralConfig", _text(num_local_experts=4, num_experts_per_tok=2),
                {"attention_experts": {"target_modules": [*ATTENTION, "w1", "w2", "w3"]},
                 "attention_router": {"target_modules": [*ATTENTION, "gate"]}}),
    "qwen2_moe": ("Qwen2MoeConfig", _text(moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=4,
                                          num_experts_per_tok=2, decoder_sparse_step=1),
                  {"attention_experts": {"target_modules": [*ATTENTION, "gate_proj", "up_proj", "down_proj"]}}),
    "llava": ("LlavaConfig", {"text_config": {"model_type": "llama", **_text()},
                              "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32,
                                                "intermediate_size": 64, "num_hidden_layers": 2,
                                                "num_attention_heads": 4, "image_size": 16, "patch_size": 8,
                                                "projection_dim": 32}, "image_token_index": 100},
              {"language_vision": {"target_modules": ["q_proj", "v_proj"]}}),
}
# written under transformers 5.x with target_parameters (peft 0.17+): attention and the fused experts
CASES_5X = {
    case: {"attention_fused_experts": {"target_modules": ATTENTION,
                                       "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}}
    for case in ("mixtral", "qwen2_moe")
}


def _auto(case):
    return transformers.LlavaForConditionalGeneration if case == "llava" else transformers.AutoModelForCausalLM


def _logits(model, case):
    inputs = {"input_ids": torch.tensor(IDS)}
    if case == "llava":  # four image tokens (the 2x2 patches of a 16-pixel image) so that the tower counts
        inputs["input_ids"][:, 1:5] = 100
        inputs["pixel_values"] = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(**inputs).logits.float()


def _base(directory, case):
    return _auto(case).from_pretrained(directory, torch_dtype=torch.float32).eval()


def _fill(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.5


def save(root, side, only=()):
    from peft import LoraConfig, get_peft_model

    for case, (cls_name, kwargs, groups) in CASES.items():
        if only and case not in only:
            continue
        base_dir = os.path.join(root, case, "base")
        if side == "4x":
            torch.manual_seed(0)
            config = getattr(transformers, cls_name)(**kwargs)
            model = _auto(case)(config) if case == "llava" else _auto(case).from_config(config)
            model.save_pretrained(base_dir, safe_serialization=True)
        else:
            groups = {f"{g}": c for g, c in CASES_5X.get(case, {}).items()}
        for n, (group, lora) in enumerate(sorted(groups.items())):
            model = _base(base_dir, case)
            expected = {"base": _logits(model, case).tolist()}
            peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora))
            _fill(peft_model, 100 + n)
            peft_model.eval()
            expected["adapter"] = _logits(peft_model, case).tolist()
            out = os.path.join(root, case, f"{side}-{group}")
            peft_model.save_pretrained(out)
            with open(os.path.join(out, "expected.json"), "w") as handle:
                json.dump(expected, handle)
    print(json.dumps({"saved": side}))


FOLD = re.compile(r"\.\d+(?=\.|$)")


def _close(a, b):
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max())))


def load(root):
    from peft import PeftModel
    from safetensors import safe_open

    answers = {}
    for case in sorted(os.listdir(root)):
        for adapter in sorted(os.listdir(os.path.join(root, case))):
            if adapter == "base":
                continue
            directory = os.path.join(root, case, adapter)
            with open(os.path.join(directory, "expected.json")) as handle:
                expected = {k: torch.tensor(v) for k, v in json.load(handle).items()}
            saved = sorted({FOLD.sub(".{i}", k.split(".lora_")[0]).replace("base_model.model.", "", 1)
                            for k in safe_open(os.path.join(directory, "adapter_model.safetensors"), "pt").keys()})
            captured = []
            handler = logging.Handler()
            handler.emit = lambda record: captured.append(record.getMessage())
            logging.getLogger().addHandler(handler)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model = PeftModel.from_pretrained(_base(os.path.join(root, case, "base"), case), directory).eval()
                    got = _logits(model, case)
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                answers[f"{case}/{adapter}"] = {"outcome": "fails", "saved": saved, "error": error}
                continue
            finally:
                logging.getLogger().removeHandler(handler)
            loaded = sorted({FOLD.sub(".{i}", n.split(".lora_B")[0]).replace("base_model.model.", "", 1)
                             for n, p in model.named_parameters() if ".lora_B" in n and p.abs().sum() > 0})

            outcome = ("adapter" if _close(got, expected["adapter"]) else
                       "base" if _close(got, expected["base"]) else "partial")
            texts = [str(w.message) for w in caught] + captured
            answers[f"{case}/{adapter}"] = {
                "outcome": outcome, "loaded": loaded, "saved": saved,
                "warned_missing": any("missing adapter keys" in t or "unexpected" in t.lower() for t in texts)}
    print(json.dumps(answers, sort_keys=True))


if __name__ == "__main__":
    {"save": lambda: save(sys.argv[2], sys.argv[3], sys.argv[4:]), "load": lambda: load(sys.argv[2])}[sys.argv[1]]()
