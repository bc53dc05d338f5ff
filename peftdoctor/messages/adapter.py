"""`explain --adapter DIR`: make an explanation precise with what a check of that adapter finds.

The text says what failed; the adapter says why for certain: whether the unknown key's value is a
no-op (so `fix` may drop it), whether the weights really are empty (ZeRO-3), whether the file really
is a model config, what rank the adapter really has. A cause the check confirms goes first.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional

from peftdoctor.model.findings import Finding, Report

_KEY = re.compile(r"unexpected keyword argument ['\"](?P<key>\w{1,100})['\"]")
# explain's code -> the codes of `check` that confirm it.
CONFIRMED_BY = {"PD214": ("PD214",), "PD206": ("PD206",), "PD359": ("PD009",), "PD204": ("PD204", "PD205", "PD215"),
                "PD362": ("PD204", "PD203"), "PD004": ("PD004", "PD005", "PD002"), "PD403": ("PD210",)}


def _config(directory: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def refine(explanations: tuple[Any, ...], report: Report, directory: str) -> tuple[Any, ...]:
    """The explanations with the adapter's facts added; a confirmed alternative becomes the finding."""
    config = _config(directory)
    checked = {f.code: f for f in report.findings}
    out = []
    for e in explanations:
        candidates = [e.finding, *e.alternatives]
        confirmed = [f for f in candidates if any(c in checked for c in CONFIRMED_BY.get(f.code, ()))]
        if confirmed and confirmed[0] is not e.finding:
            candidates.remove(confirmed[0])
            candidates.insert(0, confirmed[0])
        first = candidates[0]
        note = _note(first, e.matched, config, checked, directory)
        if note:
            first = dataclasses.replace(first, message=f"{first.message}; {note[0]}",
                                        fix=note[1] or first.fix)
        out.append(dataclasses.replace(e, finding=first, alternatives=tuple(candidates[1:])))
    return tuple(out)


def _note(finding: Finding, matched: str, config: Optional[dict[str, Any]], checked: dict[str, Finding],
          directory: str) -> Optional[tuple[str, str]]:
    for code in CONFIRMED_BY.get(finding.code, ()):
        if code in checked:
            return f"`peftdoctor check` confirms it: {checked[code].message}", ""
    if config is None:
        return None
    if finding.code == "PD105":
        key = _KEY.search(matched)
        if key and key["key"] in config:
            from peftdoctor.peft.compat import noop_reason

            reason = noop_reason(config, key["key"])
            if reason:
                return (f"in this adapter {key['key']}={config[key['key']]!r} is a no-op ({reason})",
                        f"`peftdoctor fix {directory}` drops it safely (nothing computed changes)")
            return (f"in this adapter {key['key']}={config[key['key']]!r} bears meaning: dropping it changes the "
                    "outputs", f"install a peft that knows {key['key']} (`peftdoctor check ADAPTER` names it); "
                    "do not drop the key")
    if finding.code in ("PD206", "PD361", "PD408") and isinstance(config.get("r"), int):
        base = config.get("base_model_name_or_path")
        return (f"this adapter declares r={config['r']}" + (f" and was trained on {base}" if base else ""), "")
    return None
