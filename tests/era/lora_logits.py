"""Run inside a side-by-side peft env (or the installed one): logits of a base with each adapter.

argv: one JSON file holding {"base": dir, "input_ids": [[...], ...], "jobs": [[name, adapter dir, naive], ...]}.
naive is null (load the directory as it is) or a list of keys: then a copy is loaded whose config keeps
only the keys this release's config class accepts, less those keys (the hand edit a user would make).
Prints one JSON object (its last line):
  {"peft": version, "transformers": version, "base_loaded_by": how, "base": logits,
   "jobs": {name: {"ok": true, "logits": [...], "scalings": {module: scaling}}
                 | {"ok": false, "error_type": "TypeError", "error": "..."}}}
The base's weights are always the saved safetensors (checked tensor by tensor), whichever
transformers loads them; dropout is off (eval) and only input_ids are fed (no tokenizer).
"""
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings

warnings.simplefilter("ignore")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

transformers.logging.set_verbosity_error()
torch.manual_seed(0)


def load_base(directory: str):
    """from_pretrained when this transformers reads the saved dir, else built from config.json;
    either way the weights are then set from model.safetensors (every weight), so every env agrees."""
    state = load_file(f"{directory}/model.safetensors")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
        how = "from_pretrained"
    except Exception as exc:  # an era transformers that cannot read a newer save
        config = transformers.AutoConfig.from_pretrained(directory)
        model = transformers.AutoModelForCausalLM.from_config(config)
        how = f"from_config ({type(exc).__name__})"
    missing, unexpected = model.load_state_dict(state, strict=False)
    # transformers before 4.31 keeps Llama's rotary inv_freq as a saved buffer; it is computed from the config
    assert not unexpected and all(k.endswith("rotary_emb.inv_freq") for k in missing), (missing, unexpected)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items()), "base weights differ from the safetensors"
    return model.float().eval(), how


def scalings(model) -> dict:
    out = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling:
            out[name] = float(scaling["default"])
    return out


def naive_copy(adapter: str, drop: list, scratch: str) -> str:
    """The adapter with every key this peft does not accept, and `drop`, deleted by hand."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    with open(f"{adapter}/adapter_config.json") as fh:
        config = json.load(fh)
    known = {f.name for f in dataclasses.fields(PEFT_TYPE_TO_CONFIG_MAPPING[config["peft_type"]])}
    target = tempfile.mkdtemp(dir=scratch)
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):  # releases before 0.4.0 read only the .bin
        if os.path.exists(f"{adapter}/{weights}"):
            shutil.copy(f"{adapter}/{weights}", target)
    with open(f"{target}/adapter_config.json", "w") as fh:
        json.dump({k: v for k, v in config.items() if k in known and k not in drop}, fh)
    return target


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    base, how = load_base(spec["base"])
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    with torch.no_grad():
        result = {"peft": peft.__version__, "transformers": transformers.__version__, "base_loaded_by": how,
                  "base": base(input_ids=ids).logits.tolist(), "jobs": {}}
        scratch = tempfile.mkdtemp()
        for name, adapter, naive in spec["jobs"]:
            try:
                if naive is not None:
                    adapter = naive_copy(adapter, naive, scratch)
                model = PeftModel.from_pretrained(copy.deepcopy(base), adapter).eval()
                result["jobs"][name] = {"ok": True, "logits": model(input_ids=ids).logits.tolist(),
                                        "scalings": scalings(model)}
            except Exception as exc:  # the outcome under test, whatever it is
                result["jobs"][name] = {"ok": False, "error_type": type(exc).__name__, "error": str(exc)[:500]}
        shutil.rmtree(scratch)
    print(json.dumps(result))


if __name__ == "__main__":  # tests/era/load_applied.py imports load_base
    main()
