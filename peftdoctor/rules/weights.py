"""Config against weights, from file headers only: nothing is unpickled or loaded (PD2xx)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from peftdoctor.io.adapter import PICKLE_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.io.safetensors import Header, HeaderError, read_header, size_problems
from peftdoctor.model.findings import Finding
from peftdoctor.peft import patterns, releases
from peftdoctor.rules.registry import rule

# Suffixes peft's state-dict keys carry after the module name, per LoRA-family tensor role.
_LORA_ROLE = re.compile(r"^(?P<module>.+)\.(?P<role>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                        r"lora_magnitude_vector)(\.weight)?$")
_PREFIX = "base_model.model."
LORA_TYPES = ("LORA",)
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
    try:
        header = read_header(str(adapter.path_of(SAFETENSORS_NAME)))
    except HeaderError as exc:
        return findings + [rule("PD204").finding(f"{SAFETENSORS_NAME}: {exc}",
                                                 "re-save the adapter; the file is damaged",
                                                 file=SAFETENSORS_NAME)], []
    findings += [rule("PD205").finding(f"{SAFETENSORS_NAME}: {p}", "re-copy or re-save the weights; "
                                       "the file is incomplete", file=SAFETENSORS_NAME)
                 for p in size_problems(header)]
    if config is not None and config.get("peft_type") in LORA_TYPES:
        findings += lora_findings(config, header)
    return findings, []


def lora_modules(header: Header) -> dict[str, LoraModule]:
    parts: dict[str, dict[str, Any]] = {}
    for name, info in header.tensors.items():
        match = _LORA_ROLE.match(name)
        if not match:
            continue
        entry = parts.setdefault(_strip(match["module"]), {})
        role = match["role"]
        if role in ("lora_A", "lora_embedding_A") and info.shape:
            entry["a"] = info.shape[0]
        elif role in ("lora_B", "lora_embedding_B") and len(info.shape) >= 2:
            entry["b"] = info.shape[1]
        elif role == "lora_magnitude_vector":
            entry["m"] = True
    return {n: LoraModule(n, p.get("a"), p.get("b"), p.get("m", False)) for n, p in parts.items()}


def _strip(module: str) -> str:
    return module[len(_PREFIX):] if module.startswith(_PREFIX) else module


def lora_findings(config: dict[str, Any], header: Header) -> list[Finding]:
    modules = lora_modules(header)
    findings = _rank_findings(config, modules)
    findings += _target_findings(config, modules)
    findings += _modules_to_save_findings(config, header)
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


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _target_findings(config: dict[str, Any], modules: dict[str, LoraModule]) -> list[Finding]:
    targets = config.get("target_modules")
    if not modules or not isinstance(targets, (list, str)) or targets == "all-linear":
        return []
    findings = []
    if isinstance(targets, list):
        # Set lookups, not a loop over modules per target: 10,000 targets x 1,000 modules took 7 s.
        tails = {tail for m in modules for tail in _tails(m)}
        for target in (t for t in targets if isinstance(t, str)):
            if target not in tails:
                findings.append(rule("PD207").finding(
                    f"target_modules lists {target!r} but the weights hold no LoRA tensors for it",
                    f"remove {target!r} from target_modules, or re-save the adapter that trained it",
                    key="target_modules"))
    names = targets if isinstance(targets, str) else frozenset(t for t in targets if isinstance(t, str))
    stray = sorted(m for m in modules if not _targeted(m, names))
    if stray:
        findings.append(rule("PD208").finding(
            f"weights for {_some(stray)} match no entry of target_modules: peft builds no layer for them and "
            "silently ignores those weights", "add the module names to target_modules", key="target_modules"))
    return findings


def _matches_target(module: str, target: str) -> bool:
    return module == target or module.endswith("." + target)


def _tails(module: str) -> set[str]:
    """Every name that targets `module` as a list entry: itself and each dotted tail of it (peft's rule:
    module == target or module.endswith("." + target))."""
    parts = module.split(".")
    return {".".join(parts[i:]) for i in range(len(parts))}


def _targeted(module: str, targets: str | frozenset[str]) -> bool:
    if isinstance(targets, str):
        try:
            return re.fullmatch(targets, module) is not None
        except re.error:
            return True  # peft would fail on the regex itself; don't guess further
    return not _tails(module).isdisjoint(targets)  # a set of names: see _target_findings


def _modules_to_save_findings(config: dict[str, Any], header: Header) -> list[Finding]:
    wanted = config.get("modules_to_save")
    if not isinstance(wanted, list) or not wanted:
        return []
    saved = {_strip(n).rsplit(".", 1)[0] for n in header.tensors if not _LORA_ROLE.match(n)}
    present = {w for w in wanted if isinstance(w, str) and any(_matches_target(s, w) or
                                                              _matches_target(s, w + ".modules_to_save")
                                                              for s in saved)}
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
