"""Run inside a side-by-side peft env: peft's own check_target_module_exists on a batch of cases.

argv: a JSON file holding [{"config": {...}, "names": [...]}, ...]. Prints one JSON list with, per
case, one entry per name: true/false, or "error: <ExceptionType>" where peft raises.
Standard library and that env's peft only.
"""
import json
import sys
from types import SimpleNamespace

from peft.tuners.tuners_utils import check_target_module_exists


def verdict(config: SimpleNamespace, name: str) -> object:
    try:
        return bool(check_target_module_exists(config, name))
    except Exception as exc:  # the outcome under test, whatever it is
        return f"error: {type(exc).__name__}"


with open(sys.argv[1]) as fh:
    cases = json.load(fh)
out = []
for case in cases:
    # Attributes the config classes always have; a release reads only those it knows (getattr/hasattr).
    fields = {"layers_to_transform": None, "layers_pattern": None, "target_parameters": None, **case["config"]}
    config = SimpleNamespace(**fields)
    out.append([verdict(config, name) for name in case["names"]])
print(json.dumps(out))
