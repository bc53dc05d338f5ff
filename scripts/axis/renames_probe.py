"""Run under one transformers release: the renames it applies to checkpoint keys on load, per model type.

    renames_probe.py MODEL_TYPE...

For each model type the class generate_architectures.py builds is built on the meta device (small config), then
- transformers 4.x: its `_checkpoint_conversion_mapping` (regex -> replacement; 4.52+, the VLMs' new prefixes);
- transformers 5.x: transformers.conversion_mapping.get_model_conversion_mapping(model): each WeightRenaming
  (source regex -> target, with the sub-model prefix it is scoped to) and each WeightConverter (sources fused
  into one target, with its operations' names).
Prints one JSON object on its last line: {model_type: {"mapping": [...], "renamings": [...], "converters": [...]}}
(or a string: why the model type could not be built).
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import generate_architectures as arch  # noqa: E402 - builds each model type as the module tables do


def _patterns(value) -> list[str]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def describe(model_type: str) -> dict:
    config = arch._config(model_type, arch.VARIANTS[0])
    model = arch._build(arch._classes(model_type)[0], config)
    out = {"mapping": sorted(map(list, (getattr(model, "_checkpoint_conversion_mapping", None) or {}).items())),
           "renamings": [], "converters": []}
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:  # transformers 4.x
        return out
    for transform in get_model_conversion_mapping(model, add_legacy=False):
        scope = getattr(transform, "scope_prefix", None) or ""
        sources, targets = _patterns(transform.source_patterns), _patterns(transform.target_patterns)
        if isinstance(transform, WeightConverter):
            ops = [type(op).__name__ for op in getattr(transform, "operations", [])]
            out["converters"].append({"sources": sources, "targets": targets, "operations": ops, "scope": scope})
        elif isinstance(transform, WeightRenaming):
            out["renamings"].append({"sources": sources, "targets": targets, "scope": scope})
    return out


def main(model_types: list[str]) -> None:
    arch._quiet()
    found = {}
    for model_type in model_types:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                found[model_type] = describe(model_type)
        except Exception as exc:  # noqa: BLE001 - recorded: this release has no such model type
            found[model_type] = arch._why(exc)
    print(json.dumps(found, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
