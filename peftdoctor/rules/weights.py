"""Config against weights, from file headers only: nothing is unpickled or loaded (PD2xx)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from packaging.version import Version

from peftdoctor.io.safetensors import size_problems
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.model.findings import Finding
from peftdoctor.peft import patterns, postinit, releases, semantics, targeting, tensor_names
from peftdoctor.peft.releases import Release
from peftdoctor.rules.registry import rule
from peftdoctor.rules.values import value_findings

LORA_TYPES = ("LORA",)
VALUES_NOT_READ = ("tensor values were not read (on the Hub only the config and the weights header are fetched): "
                   "the NaN/Inf and all-zero checks need a local copy")
LFS_FIX = "run `git lfs install && git lfs pull` in the clone (or download the repo with `hf download`)"
# Heads peft adds to modules_to_save on its own for these task types; a base has one or the other.
AUTO_MODULES_TO_SAVE = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                        "QUESTION_ANS": ("qa_outputs",)}


@dataclass(frozen=True)
class LoraModule:
    name: str
    a_rank: Optional[int]
    b_rank: Optional[int]
    has_magnitude: bool


def weight_findings(adapter: Adapter, config: Optional[dict[str, Any]], target: Optional[Release] = None
                    ) -> tuple[list[Finding], list[str]]:
    """Findings about the weight files for the release `target` (default: the newest known), and notes on
    what could not be checked."""
    files = adapter.weight_files
    if not files:
        return [rule("PD201").finding(f"no {SAFETENSORS_NAME} or {PICKLE_NAME} beside the config",
                                      "copy the weights saved by save_pretrained() next to adapter_config.json",
                                      file=SAFETENSORS_NAME)], []
    findings = [pointer_finding(name) for name in files if name in adapter.lfs_pointers]
    if len(files) == 2:
        findings.append(rule("PD202").finding(
            "both weight formats are present; peft loads the .safetensors file and ignores the .bin",
            f"delete {PICKLE_NAME} once you know the safetensors file is the one you mean", file=PICKLE_NAME))
    if PICKLE_NAME in files and PICKLE_NAME not in adapter.lfs_pointers:
        findings.append(rule("PD203").finding(
            f"{PICKLE_NAME} is a Python pickle: loading it can run arbitrary code (not unpickled here)",
            "convert it to safetensors in a trusted environment and delete the .bin", file=PICKLE_NAME))
    if SAFETENSORS_NAME not in files:
        return findings, [f"{PICKLE_NAME} is never unpickled, so shapes were not checked"]
    if SAFETENSORS_NAME in adapter.refused:
        return findings, [f"{SAFETENSORS_NAME} {adapter.refused[SAFETENSORS_NAME]}"]
    header = adapter.header
    if header is None and SAFETENSORS_NAME in adapter.lfs_pointers:
        return findings, []
    if header is None:
        return findings + [rule("PD204").finding(f"{SAFETENSORS_NAME}: {adapter.header_error}",
                                                 "re-save the adapter; the file is damaged",
                                                 file=SAFETENSORS_NAME)], []
    findings += [rule("PD205").finding(f"{SAFETENSORS_NAME}: {p}", "re-copy or re-save the weights; "
                                       "the file is incomplete", file=SAFETENSORS_NAME)
                 for p in size_problems(header)]  # (the values are read only from a complete file)
    problems = size_problems(header)
    findings += value_findings(adapter)
    notes = [VALUES_NOT_READ] if adapter.values is None and adapter.origin == "hub" and not problems else []
    if config is not None and config.get("peft_type") in LORA_TYPES:
        findings += lora_findings(config, adapter, target or releases.load(releases.known_versions()[-1]))
    return findings, notes


def pointer_finding(name: str) -> Finding:
    """PD362: `name` (the config or a weights file) is a Git LFS pointer; the one fix is to fetch the content."""
    what = "the config" if name == CONFIG_NAME else "the weights"
    return rule("PD362").finding(f"{name} is a Git LFS pointer (a small text file starting 'version https://git-lfs"
                                 f"...'), not {what}: the repo was cloned without git-lfs, and peft cannot load it",
                                 LFS_FIX, file=name)


def lora_modules(adapter: Adapter) -> dict[str, LoraModule]:
    """Each module with LoRA (or DoRA) tensors, with the ranks its A and B hold (tensor_names' grammar)."""
    parts: dict[str, dict[str, Any]] = {}
    for key, name in adapter.tensors.items():
        if name.family not in ("lora", "dora"):
            continue
        entry = parts.setdefault(name.module, {})
        rank = tensor_names.lora_rank(name, adapter.shape_of(key))
        if rank is not None:
            entry["a" if name.role in tensor_names.A_ROLES else "b"] = rank
        elif name.family == "dora":
            entry["m"] = True
    return {n: LoraModule(n, p.get("a"), p.get("b"), p.get("m", False)) for n, p in parts.items()}


def lora_findings(config: dict[str, Any], adapter: Adapter, target: Release) -> list[Finding]:
    modules = lora_modules(adapter)
    # target_parameters' wrappers hold r * experts rows of rank and match no target_modules entry: judged
    # against the base's parameters (rules/parameters.py), and here only for a rank that is no multiple of r
    wrapped = {n: m for n, m in modules.items() if targeting.parameter_wrapped(config, n)}
    modules = {n: m for n, m in modules.items() if n not in wrapped}
    findings = _wrapped_rank_findings(config, wrapped)
    findings += _rank_findings(config, modules, target)
    findings += _modules_to_save_findings(config, adapter, target.version)
    findings += _dora_findings(config, modules)
    return findings


def saved_ranks(modules: dict[str, LoraModule]) -> list[int]:
    """The distinct ranks the LoRA weights hold, most common first."""
    found = Counter(g for m in modules.values() for g in (m.a_rank, m.b_rank) if g is not None)
    return [rank for rank, _ in found.most_common()]


def _rank_findings(config: dict[str, Any], modules: dict[str, LoraModule], target: Release) -> list[Finding]:
    """One finding per (declared, found) rank pair, naming the modules it concerns. A rank below 1 is no size
    mismatch: releases that refuse it say so (rules/schema.py, post-init); older ones build no LoRA layer."""
    r = config.get("r")
    if isinstance(r, (int, float)) and not isinstance(r, bool) and r < 1:
        if not modules or postinit.refusal(target, "LORA", {"r": r}):  # the release's own r check
            return []
        return [rule("PD206").finding(
            f"the config declares r={r}: peft {target.name} builds LoRA layers only for r > 0, so it loads none and "
            f"silently ignores the saved rank-{saved_ranks(modules)[0]} weights: the adapter computes the base model",
            f"set r to {saved_ranks(modules)[0]}, the rank the saved weights hold", key="r")]
    # Ranks as the newest peft would build them; the pattern rules of older releases differ only
    # in which key wins when several match (peftdoctor/patterns.py).
    built = patterns.module_values(config, list(modules), releases.known_versions()[-1])
    wrong: dict[tuple[str, int, int], list[str]] = {}
    for module in modules.values():
        expected = built[module.name][0]
        if not isinstance(expected, int) or isinstance(expected, bool) or expected < 1:
            continue
        got = next((g for g in (module.a_rank, module.b_rank) if g is not None and g != expected), None)
        if got is not None:
            source = "rank_pattern" if expected != r else "r"
            wrong.setdefault((source, expected, got), []).append(module.name)
    return [rule("PD206").finding(
        f"{_some(names)} hold rank-{got} LoRA weights but the config declares {source}={expected}: "
        "loading fails with a size mismatch",
        f"set {'the rank_pattern entry' if source == 'rank_pattern' else 'r'} to {got} if these weights are "
        "the right ones", key=source) for (source, expected, got), names in wrong.items()]


def _wrapped_rank_findings(config: dict[str, Any], wrapped: dict[str, LoraModule]) -> list[Finding]:
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or config.get("rank_pattern"):
        return []
    wrong = sorted(m.name for m in wrapped.values() if any(g is not None and g % r for g in (m.a_rank, m.b_rank)))
    return [rule("PD206").finding(
        f"{_some(wrong)} (target_parameters) hold LoRA weights whose rank is no multiple of r={r} "
        "(peft builds r * experts): loading fails with a size mismatch",
        "set r to the rank the adapter was trained with", key="r")] if wrong else []


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _modules_to_save_findings(config: dict[str, Any], adapter: Adapter, target: Version) -> list[Finding]:
    wanted = config.get("modules_to_save")
    if not isinstance(wanted, list) or not wanted:
        return []
    saved = [name.base_parameter for name in adapter.tensors.values() if name.family in ("other", "copy", "whole")]
    present = {w for w in wanted if isinstance(w, str) and any(targeting.saved_by(s, [w]) for s in saved)}
    optional = set(AUTO_MODULES_TO_SAVE.get(str(config.get("task_type")), ()))
    missing = [w for w in wanted if isinstance(w, str) and w not in present]
    if optional and present & optional:
        missing = [w for w in missing if w not in optional]
    raises = target >= Version(semantics.MODULES_TO_SAVE_KEYERROR_SINCE)
    consequence = (f"peft {target} raises KeyError while loading the adapter (it looks up the saved copy of each "
                   "module it wraps)" if raises else
                   f"peft {target} loads the adapter with the base's own module there, not a trained copy")
    return [rule("PD209").finding(f"modules_to_save lists {w!r} but no weights for it were saved: {consequence}",
                                  f"re-save the adapter with the trained {w!r}, or remove it from modules_to_save",
                                  key="modules_to_save") for w in missing]


def _dora_findings(config: dict[str, Any], modules: dict[str, LoraModule]) -> list[Finding]:
    if not modules:
        return []
    with_magnitude = sum(m.has_magnitude for m in modules.values())
    if config.get("use_dora") is True and with_magnitude == 0:
        return [rule("PD210").finding("use_dora is true but the weights hold no lora_magnitude_vector: "
                                      "DoRA would start from untrained magnitudes", "set use_dora false if this "
                                      "is a plain LoRA adapter", key="use_dora")]
    if config.get("use_dora") is not True and with_magnitude:
        return [rule("PD210").finding(f"{with_magnitude} module(s) carry DoRA magnitude vectors but use_dora "
                                      "is not true: they are ignored and outputs change",
                                      "set use_dora true", key="use_dora")]
    return []
