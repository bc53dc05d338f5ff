"""Run inside a side-by-side peft env: peft's own check_target_module_exists on a batch of cases.

argv: a JSON file holding [{"config": {...}, "names": [...]}, ...]. Prints one JSON list with, per
case, one entry per name: true/false, or "error: <ExceptionType>" where peft raises.
Standard library and that env's peft only. `evaluate` also runs peft's function as copied from
releases without an env (tests/era/peft_matchers/).
"""
import json
import sys
from types import SimpleNamespace


def evaluate(check, cases: list) -> list:
    out = []
    for case in cases:
        # Attributes the config classes always have; a release reads only those it knows (getattr/hasattr).
        fields = {"layers_to_transform": None, "layers_pattern": None, "target_parameters": None, **case["config"]}
        config = SimpleNamespace(**fields)
        out.append([_verdict(check, config, name) for name in case["names"]])
    return out


def _verdict(check, config: SimpleNamespace, name: str) -> object:
    try:
        return bool(check(config, name))
    except Exception as exc:  # the outcome under test, whatever it is
        return f"error: {type(exc).__name__}"


if __name__ == "__main__":
    from peft.tuners.tuners_utils import check_target_module_exists

    with open(sys.argv[1]) as fh:
        print(json.dumps(evaluate(check_target_module_exists, json.load(fh))))
