"""The registry of finding codes: one table feeds findings, `rules`, SARIF and the README.

PD0xx: what the input is; PD1xx: adapter_config.json; PD2xx: weights against config;
PD3xx: loading and merging (verify). Codes are stable: never renumber, only add.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .report import Finding, Severity

E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str

    def finding(self, message: str, fix: str, *, key: Optional[str] = None, file: Optional[str] = None,
                severity: Optional[Severity] = None) -> Finding:
        return Finding(self.code, severity or self.severity, message, fix, key, file)


_TABLE = [
    ("PD001", "empty-directory", E, "The directory is empty: there is no adapter in it."),
    ("PD002", "full-model-directory", E, "A full model (config.json and weights), not a PEFT adapter."),
    ("PD003", "medusa-heads", E, "A Medusa heads checkpoint, not a PEFT adapter."),
    ("PD004", "no-adapter-config", E, "No adapter_config.json in the directory."),
    ("PD005", "adapters-in-subfolders", E, "The adapters are in subfolders of the directory given."),
    ("PD006", "symlink-escapes", E, "A file is a symlink pointing outside the adapter directory."),
    ("PD101", "config-unreadable", E, "adapter_config.json is not a JSON object."),
    ("PD102", "peft-type-missing", E, "adapter_config.json has no peft_type."),
    ("PD103", "peft-type-unknown", E, "The target peft release does not know this peft_type."),
    ("PD104", "invalid-value", E, "A value has a type or value the target release's config class does not accept."),
    ("PD105", "unknown-key-fails", E, "The target release raises on a key it does not know: loading fails."),
    ("PD106", "meaning-dropped", E, "The target release drops a meaning-bearing key: the adapter computes something else."),
    ("PD107", "noop-key-dropped", I, "The target release drops a key whose value is a no-op: safe."),
    ("PD108", "legacy-key", W, "A key from an old peft release that newer releases no longer know."),
    ("PD109", "key-unknown-to-all", W, "A key that no peft release knows (a typo, or another tool's key)."),
    ("PD110", "written-by-newer", I, "The config was written by a newer peft than the target release."),
    ("PD111", "peft-version-unparseable", W, "The peft_version field is not a version peft could have written."),
    ("PD112", "base-mutating-init", W, "init_lora_weights mutates the base at load time and the adapter was not converted."),
    ("PD113", "base-not-portable", W, "base_model_name_or_path is empty or a machine-local path."),
    ("PD114", "oft-weights-changed", E, "An OFT adapter saved before peft 0.14.0 changed OFT's weights."),
    ("PD115", "tied-layer-adapted", W, "A tied embedding/output layer is adapted: merging or saving may drop it."),
    ("PD116", "task-type-unknown", W, "The target release does not know this task_type."),
    ("PD117", "target-approximated", I, "No schema for the target peft release; the closest older one stood in."),
    ("PD201", "weights-missing", E, "No adapter_model.safetensors or adapter_model.bin."),
    ("PD202", "both-weight-formats", W, "Both adapter_model.safetensors and adapter_model.bin are present."),
    ("PD203", "pickle-weights", W, "adapter_model.bin is a pickle: loading it can execute code."),
    ("PD204", "weights-header-unreadable", E, "The safetensors header cannot be read."),
    ("PD205", "weights-truncated", E, "The weights file is too small to hold the tensors it declares."),
    ("PD206", "rank-mismatch", E, "A lora_A/lora_B shape does not match the declared rank."),
    ("PD207", "target-without-weights", W, "A target module has no weights in the adapter file."),
    ("PD208", "weights-outside-targets", E, "The file holds weights for modules the config does not target."),
    ("PD209", "modules-to-save-missing", E, "A module in modules_to_save has no saved weights."),
    ("PD210", "dora-mismatch", E, "use_dora and the presence of DoRA magnitude vectors disagree."),
]

RULES: dict[str, Rule] = {code: Rule(code, name, sev, summary) for code, name, sev, summary in _TABLE}


def rule(code: str) -> Rule:
    return RULES[code]


def markdown_table() -> str:
    """The README's table of finding codes; tests/test_readme.py keeps the README equal to it."""
    rows = [f"| {r.code} | {r.name} | {r.severity.value} | {r.summary} |" for r in RULES.values()]
    return "\n".join(["| code | name | severity | meaning |", "|---|---|---|---|", *rows]) + "\n"
