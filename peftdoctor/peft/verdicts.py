"""One verdict per peft release for the whole adapter, not its config alone.

compat.predict says what a release does with adapter_config.json. Here each release's entry is judged again
with what else decides the outcome, and the worst wins (model/findings.py VERDICTS orders them):

- transformers: `import peft` itself fails under the judged transformers release (transformers_axis);
- weights and base: the check's error findings that hold in every release (a rank or layer size that does not
  fit raises; NaN or all-zero weights compute something else or the base), from `BY_CODE`;
- the application (peft/application.py), per release: tensors dropped on load and adapted modules without
  weights make it compute part of the adapter, the base, or random outputs.

Findings judged for the target release only (a config value that release refuses) count for its entry alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from peftdoctor.model.findings import VERDICTS, Compatibility, Finding, Severity
from peftdoctor.peft import application, releases, targeting, transformers_axis
from peftdoctor.peft.application import Application, Tree
from peftdoctor.peft.tensor_names import TensorName

# code -> (verdict, part) for error findings that hold whichever release loads the adapter
BY_CODE: dict[str, tuple[str, str]] = {
    "PD201": ("fails", "weights"), "PD204": ("fails", "weights"), "PD205": ("fails", "weights"),
    "PD215": ("fails", "weights"), "PD206": ("fails", "weights"), "PD214": ("fails", "weights"),
    "PD220": ("fails", "base"), "PD221": ("fails", "base"), "PD222": ("fails", "base"),
    "PD211": ("wrong", "weights"), "PD210": ("wrong", "weights"), "PD212": ("base", "weights"),
}
# PD209 (a modules_to_save copy missing): KeyError from 0.15.0, the base's untrained module before
MISSING_COPY = "PD209"
# error findings judged for the target release alone (the schema rules): they decide that release's entry
TARGET_ONLY: dict[str, tuple[str, str]] = {"PD104": ("fails", "config"), "PD114": ("wrong", "config")}
# (PD223, PD207 and PD208 are not read from the target's findings: the application is judged per release)


def _rank(verdict: str) -> int:
    return VERDICTS.index(verdict)


def judge(entries: tuple[Compatibility, ...], findings: tuple[Finding, ...], target: str,
          transformers: Optional[str], lora: Optional[tuple[Mapping[str, TensorName], Mapping[str, int]]],
          config: Mapping[str, Any], tree: Optional[Tree]) -> tuple[Compatibility, ...]:
    """`entries` (compat.compatibility) with each release's verdict, part and detail filled in. `lora`: the
    saved tensors and their sizes when the adapter is a LoRA with a readable header (else no application)."""
    errors = [f for f in findings if f.severity is Severity.ERROR]
    common = [(BY_CODE[f.code], f.message) for f in errors if f.code in BY_CODE]
    own = [(TARGET_ONLY[f.code], f.message) for f in errors if f.code in TARGET_ONLY]
    applied: dict[Any, Application] = {}
    out = []
    for entry in entries:
        candidates: list[tuple[tuple[str, str], str]] = []
        if entry.result == "fails":
            candidates.append((("fails", "config"), entry.error or "fails"))
        failure = transformers_axis.import_failure(entry.peft, transformers) if transformers else None
        if failure:
            said = f"import peft fails with transformers {transformers}: {failure}"
            candidates.append((("fails", "transformers"), said))
        candidates += common + (own if entry.peft == target else [])
        candidates += [(_missing_copy(entry.peft), f.message) for f in errors if f.code == MISSING_COPY]
        if lora is not None and entry.result != "fails":
            done = _application(applied, entry.peft, lora, config, tree, transformers)
            if done.verdict != "ok":
                candidates.append(((done.verdict, "base" if _base_side(done) else "weights"), _said(done)))
        if entry.result == "drops_keys":
            candidates.append((("drops_keys", "config"), "drops " + ", ".join(entry.dropped)))
        (verdict, part), detail = max(candidates, key=lambda c: _rank(c[0][0]), default=(("ok", None), None))
        out.append(dataclasses.replace(entry, verdict=verdict, part=part, detail=detail))
    return tuple(out)


def _application(memo: dict[Any, Application], peft: str, lora: tuple[Mapping[str, TensorName], Mapping[str, int]],
                 config: Mapping[str, Any], tree: Optional[Tree], transformers: Optional[str]) -> Application:
    """The application by `peft`, computed once per distinct behaviour (36 releases share a handful)."""
    version = releases.parse_version(peft) or releases.known_versions()[-1]
    model_type = tree.arch.model_type if tree is not None else None
    key = (targeting.regime(version), application.behaviour(version),
           transformers_axis.renames(peft, transformers, model_type) if transformers else ())
    if key not in memo:
        memo[key] = application.apply(lora[0], lora[1], config, tree, version, transformers)
    return memo[key]


def _missing_copy(peft: str) -> tuple[str, str]:
    version = releases.parse_version(peft) or releases.known_versions()[-1]
    return ("fails" if application.behaviour(version).copies_required else "partial"), "weights"


def _base_side(done: Application) -> bool:
    """Whether the base decides it: tensors whose paths the base lacks, and no other reason."""
    return bool(done.ignored) and all(p.ignored == "not-in-base" for p in done.ignored)


def _said(done: Application) -> str:
    reasons = sorted({application.REASONS[p.ignored] for p in done.ignored if p.ignored})
    parts = [f"applies {done.share}"] + reasons
    if done.unweighted:
        parts.append(f"{len(done.unweighted)} adapted module(s) get "
                     + ("random weights" if done.random else "no weights (they compute the base)"))
    return "; ".join(parts)
