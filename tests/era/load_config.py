"""Run inside a side-by-side peft env: load adapter_config.json files the way PeftModel does.

argv: adapter directories. Prints one JSON object mapping each directory to
{"result": "ok"|"drops_keys"|"fails", "error": str|null, "dropped": [...], "warnings": [...]}.
Standard library and that env's peft only.
"""
import json
import sys
import warnings


def peek(directory: str) -> dict:
    """The JSON read leniently (json.loads on bytes accepts a byte-order mark and UTF-16/32), only to pick the
    config class: peft's own read of the file is what is under test. {} when even this fails (an LFS pointer)."""
    with open(f"{directory}/adapter_config.json", "rb") as fh:
        try:
            return json.loads(fh.read())
        except ValueError:
            return {}


def load(directory: str) -> dict:
    saved = peek(directory)
    caught = []
    try:
        import peft
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # PeftModel.from_pretrained reads peft_type straight from the JSON (PeftConfig._get_peft_type),
            # then loads with that type's config class; the base class reads a file that has none.
            cls = PEFT_TYPE_TO_CONFIG_MAPPING[saved["peft_type"]] if "peft_type" in saved else peft.PeftConfig
            config = cls.from_pretrained(directory)
    except Exception as exc:  # the outcome under test, whatever it is
        return {"result": "fails", "error": f"{type(exc).__name__}: {exc}", "dropped": [],
                "warnings": [str(w.message) for w in caught]}
    dropped = [key for key in saved if not hasattr(config, key)]
    return {"result": "drops_keys" if dropped else "ok", "error": None, "dropped": dropped,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


print(json.dumps({directory: load(directory) for directory in sys.argv[1:]}))
