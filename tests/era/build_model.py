"""Run inside a side-by-side peft env (or the installed one): load each config and build its PeftModel.

argv: adapter directories. For each, the config is loaded the way PeftModel.from_pretrained loads it
(PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained), then the PeftModel is built on a tiny OPT
(one layer, hidden size 16, made from a config: no download) in inference mode, which is where
from_pretrained creates the adapter layers before it reads any weights.
Prints one JSON object mapping each directory to
{"result": "ok"|"drops_keys"|"fails", "error": str|null, "dropped": [...]}.
This env's peft, torch and transformers only.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")


def tiny_opt():
    import transformers

    config = transformers.OPTConfig(vocab_size=32, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                                    num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16)
    return transformers.OPTForCausalLM(config)


def build(directory):
    with open(f"{directory}/adapter_config.json") as fh:
        saved = json.load(fh)
    try:
        from peft import PeftModel
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        config = PEFT_TYPE_TO_CONFIG_MAPPING[saved["peft_type"]].from_pretrained(directory)
        config.inference_mode = True
        PeftModel(tiny_opt(), config)
    except Exception as exc:  # the outcome under test, whatever it is
        return {"result": "fails", "error": f"{type(exc).__name__}: {exc}", "dropped": []}
    dropped = [key for key in saved if not hasattr(config, key)]
    return {"result": "drops_keys" if dropped else "ok", "error": None, "dropped": dropped}


print(json.dumps({directory: build(directory) for directory in sys.argv[1:]}))
