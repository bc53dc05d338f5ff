"""Run inside a side-by-side peft env (or the installed one): what PeftModel.from_pretrained makes of adapters.

argv: one JSON file holding {"base": dir, "input_ids": [[...]], "jobs": {name: adapter dir}}.
Prints one JSON object (its last line):
  {"peft": version, "base": logits, "jobs": {name: {"error": "ValueError: ..." | null, "logits": [...] | null,
                                                    "warnings": [the texts of the warnings raised while loading]}}}
The base is loaded as tests/era/lora_logits.py loads it (its saved weights, whichever transformers reads them).
"""
import copy
import json
import sys
import warnings

import peft
import torch
from lora_logits import load_base
from peft import PeftModel


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    base, _ = load_base(spec["base"])
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    result = {"peft": peft.__version__, "jobs": {}}
    with torch.no_grad():
        result["base"] = base(input_ids=ids).logits.tolist()
        for name, adapter in spec["jobs"].items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model = PeftModel.from_pretrained(copy.deepcopy(base), adapter).eval()
                    logits, error = model(input_ids=ids).logits.tolist(), None
                except Exception as exc:  # the outcome under test, whatever it is
                    logits, error = None, f"{type(exc).__name__}: {exc}"[:500]
            result["jobs"][name] = {"error": error, "logits": logits,
                                    "warnings": [str(w.message)[:300] for w in caught]}
    print(json.dumps(result))


main()
