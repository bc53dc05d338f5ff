"""Run inside a side-by-side peft env: load adapter_config.json files the way PeftModel does.

argv: adapter directories. Prints one JSON object mapping each directory to
{"result": "ok"|"drops_keys"|"fails", "error": str|null, "dropped": [...], "warnings": [...]}.
Standard library and that env's peft only.
"""
import json
import sys
import warnings


def load(directory: str) -> dict:
    with open(f"{directory}/adapter_config.json") as fh:
        saved = json.load(fh)
    caught = []
    try:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # PeftModel.from_pretrained reads peft_type straight from the JSON (PeftConfig._get_peft_type),
            # then loads with that type's config class.
            config = PEFT_TYPE_TO_CONFIG_MAPPING[saved["peft_type"]].from_pretrained(directory)
    except Exception as exc:  # the outcome under test, whatever it is
        return {"result": "fails", "error": f"{type(exc).__name__}: {exc}", "dropped": [],
                "warnings": [str(w.message) for w in caught]}
    dropped = [key for key in saved if not hasattr(config, key)]
    return {"result": "drops_keys" if dropped else "ok", "error": None, "dropped": dropped,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


print(json.dumps({directory: load(directory) for directory in sys.argv[1:]}))
