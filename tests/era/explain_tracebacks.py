"""Run inside a side-by-side peft env: the tracebacks this release prints for configs it cannot load.

argv: one JSON object {"save_oft": DIR, "load": [DIR, ...]}.
- save_oft: an OFTConfig made by this release's own class is saved there (for a newer release to refuse);
- load: each directory's adapter_config.json is loaded twice, the way PeftModel.from_pretrained does
  (PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained) and with PeftConfig.from_pretrained.
Prints one JSON object {"peft_model": {dir: traceback or null}, "peft_config": {dir: traceback or null}}.
Standard library and this env's peft only.
"""
import json
import sys
import traceback


def traceback_of(call):
    try:
        call()
    except Exception:  # the outcome under test, whatever it is
        return traceback.format_exc()
    return None


def main():
    job = json.loads(sys.argv[1])
    import peft
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft.OFTConfig(r=8, target_modules=["q_proj"]).save_pretrained(job["save_oft"])

    def as_peft_model(directory):
        with open(f"{directory}/adapter_config.json") as fh:
            peft_type = json.load(fh)["peft_type"]
        return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained(directory)

    print(json.dumps({
        "peft_model": {d: traceback_of(lambda: as_peft_model(d)) for d in job["load"]},
        "peft_config": {d: traceback_of(lambda: PeftConfig.from_pretrained(d)) for d in job["load"]},
    }))


main()
