"""Config against weights, from file headers only: nothing is unpickled or loaded (PD2xx)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from packaging.version import Version

from peftdoctor.io.safetensors import size_problems
from peftdoctor.model.adapter import PICKLE_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.model.findings import Finding
from peftdoctor.peft import patterns, releases, targeting, tensor_names
from peftdoctor.peft.targeting import REGEX_CHARS
from peftdoctor.rules.registry import rule
from peftdoctor.rules.values import value_findings

LORA_TYPES = ("LORA",)
VALUES_NOT_READ = ("tensor values were not read (on the Hub only the config and the weights header are fetched): "
                   "the NaN/Inf and all-zero checks need a local copy")
# Heads peft adds to modules_to_save on its own for these task types; a base has one or the other.
AUTO_MODULES_TO_SAVE = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                        "QUESTION_ANS": ("qa_outputs",)}


@dataclass(frozen=True)
class LoraModule:
    name: str
    a_rank: Optional[int]
    b_rank: Optional[int]
    has_magnitude: bool


def weight_findings(adapter: Adapter, config: Optional[dict[str, Any]]) -> tuple[list[Finding], list[str]]:
    """Findings about the weight files, and notes on what could not be checked."""
    files = adapter.weight_files
    if not files:
        return [rule("PD201").finding(f"no {SAFETENSORS_NAME} or {PICKLE_NAME} beside the config",
                                      "copy the weights saved by save_pretrained() next to adapter_config.json",
                                      file=SAFETENSORS_NAME)], []
    findings: list[Finding] = []
    if len(files) == 2:
        findings.append(rule("PD202").finding(
            "both weight formats are present; peft loads the .safetensors file and ignores the .bin",
            f"delete {PICKLE_NAME} once you know the safetensors file is the one you mean", file=PICKLE_NAME))
    if PICKLE_NAME in files:
        findings.append(rule("PD203").finding(
            f"{PICKLE_NAME} is a Python pickle: loading it can run arbitrary code (not unpickled here)",
            "convert it to safetensors in a trusted environment and delete the .bin", file=PICKLE_NAME))
    if SAFETENSORS_NAME not in files:
        return findings, [f"{PICKLE_NAME} is never unpickled, so shapes were not checked"]
    if SAFETENSORS_NAME in adapter.refused:
        return findings, [f"{SAFETENSORS_NAME} {adapter.refused[SAFETENSORS_NAME]}"]
    header = adapter.header
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
        findings += lora_findings(config, adapter)
    return findings, notes


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


def lora_findings(config: dict[str, Any], adapter: Adapter) -> list[Finding]:
    modules = lora_modules(adapter)
    # target_parameters' wrappers hold r * experts rows of rank and match no target_modules entry: judged
    # against the base's parameters (rules/parameters.py), and here only for a rank that is no multiple of r
    wrapped = {n: m for n, m in modules.items() if targeting.parameter_wrapped(config, n)}
    modules = {n: m for n, m in modules.items() if n not in wrapped}
    findings = _wrapped_rank_findings(config, wrapped)
    findings += _rank_findings(config, modules)
    findings += _target_findings(config, modules)
    findings += _modules_to_save_findings(config, adapter)
    findings += _dora_findings(config, modules)
    return findings


def _rank_findings(config: dict[str, Any], modules: dict[str, LoraModule]) -> list[Finding]:
    """One finding per (declared, found) rank pair, naming the modules it concerns."""
    r = config.get("r")
    # Ranks as the newest peft would build them; the pattern rules of older releases differ only
    # in which key wins when several match (peftdoctor/patterns.py).
    built = patterns.module_values(config, list(modules), releases.known_versions()[-1])
    wrong: dict[tuple[str, int, int], list[str]] = {}
    for module in modules.values():
        expected = built[module.name][0]
        if not isinstance(expected, int) or isinstance(expected, bool):
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


def _target_findings(config: dict[str, Any], modules: dict[str, LoraModule]) -> list[Finding]:
    targets = config.get("target_modules")
    if not modules or not isinstance(targets, (list, str)):
        return []
    newest = releases.known_versions()[-1]
    findings = []
    if isinstance(targets, list):
        # One target at a time through the one matcher; a plain name is a set lookup over the modules' tails
        # (10,000 targets x 1,000 modules took 7 s as a double loop).
        tails = {".".join(m.split(".")[i:]) for m in modules for i in range(m.count(".") + 1)}
        missing = []
        for target in (t for t in targets if isinstance(t, str)):
            known = target in tails if REGEX_CHARS.isdisjoint(target) else None
            if known is False or (known is None and not any(
                    _targeted({**config, "target_modules": [target]}, m, newest) for m in modules)):
                missing.append(target)
        findings += [rule("PD207").finding(
            f"target_modules lists {target!r} but the weights hold no LoRA tensors for it",
            f"remove {target!r} from target_modules, or re-save the adapter that trained it",
            key="target_modules") for target in missing[:3]]
        if len(missing) > 3:  # one more finding for the rest, not one per entry of a 100,000-entry list
            findings.append(rule("PD207").finding(
                f"{len(missing) - 3} more entries of target_modules have no LoRA tensors in the weights "
                f"({_some(missing[3:])})", "remove them from target_modules", key="target_modules"))
    stray = sorted(m for m in modules if not _targeted(config, m, newest))
    if stray:
        findings.append(rule("PD208").finding(
            f"weights for {_some(stray)} match no module the config targets (target_modules, exclude_modules, "
            "layers_to_transform): peft builds no layer for them and silently ignores those weights",
            "add the module names to target_modules", key="target_modules"))
    return findings


def _targeted(config: dict[str, Any], module: str, version: Version) -> bool:
    try:
        return targeting.targeted(config, module, version)
    except targeting.PROBLEMS:
        return True  # peft would fail on the pattern itself; don't guess further


def _modules_to_save_findings(config: dict[str, Any], adapter: Adapter) -> list[Finding]:
    wanted = config.get("modules_to_save")
    if not isinstance(wanted, list) or not wanted:
        return []
    saved = [name.base_parameter for name in adapter.tensors.values() if name.family in ("other", "copy", "whole")]
    present = {w for w in wanted if isinstance(w, str) and any(targeting.saved_by(s, [w]) for s in saved)}
    optional = set(AUTO_MODULES_TO_SAVE.get(str(config.get("task_type")), ()))
    missing = [w for w in wanted if isinstance(w, str) and w not in present]
    if optional and present & optional:
        missing = [w for w in missing if w not in optional]
    return [rule("PD209").finding(f"modules_to_save lists {w!r} but no weights for it were saved: the base's "
                                  "untrained copy is used instead", f"re-save the adapter with the trained {w!r}, "
                                  "or remove it from modules_to_save", key="modules_to_save") for w in missing]


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
