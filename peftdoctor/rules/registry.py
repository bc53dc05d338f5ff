"""The registry of finding codes: one table feeds findings, `rules`, SARIF and docs/findings.md.

PD0xx: what the input is; PD1xx: adapter_config.json; PD2xx: weights against config (PD22x: the adapter
against its base's architecture and sizes);
PD3xx: loading and merging (verify);
PD4xx: deployment targets (inference engines). Codes are stable: never renumber, only add.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from peftdoctor.model.findings import Finding, Severity

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
    ("PD007", "not-a-regular-file", E, "A file of the adapter is a fifo, device or socket: not read."),
    ("PD006", "symlink-escapes", E, "A file is a symlink pointing outside the adapter directory."),
    ("PD009", "another-tools-format", E, "Another tool's adapter format (mlx-lm, AdapterHub, diffusers, kohya, a model config), not PEFT."),
    ("PD008", "unusable-input", E, "The adapter could not be checked at all (scan goes on with the others)."),
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
    ("PD118", "pattern-invalid", E, "A regex in the config (target_modules, rank_pattern keys, ...) does not compile: loading fails."),
    ("PD119", "config-encoding", E, "adapter_config.json has a byte-order mark or is UTF-16/32: every peft release fails to read it."),
    ("PD120", "scaling-not-finite", E, "lora_alpha or an alpha_pattern value is NaN or infinite: peft loads it and every adapted output is NaN."),
    ("PD121", "all-linear-unknown", E, "target_modules is \"all-linear\", which peft releases before 0.8.0 take as a module name: loading fails."),
    ("PD190", "fix-refused", E, "fix has no exact rewrite for a key: nothing is written (--force drops it)."),
    ("PD191", "fix-rewrite", I, "fix rewrites a key for the target release (a --force rewrite changes the meaning)."),
    ("PD350", "target-modules-not-found", E, "target_modules match no module of the base (explain)."),
    ("PD351", "vocabulary-size-mismatch", E, "Embedding/LM-head shapes differ: the base's vocabulary was not resized (explain)."),
    ("PD352", "automodel-on-adapter", E, "A full-model class was pointed at an adapter directory (explain)."),
    ("PD353", "no-such-peft-name", E, "An import names something peft does not have (explain)."),
    ("PD354", "merge-into-quantized", W, "Merging into a quantized base rounds the adapter away (explain)."),
    ("PD355", "missing-adapter-keys", E, "Loading found no weights for some adapted modules (explain)."),
    ("PD356", "merge-nan", E, "Merging produced NaNs (explain)."),
    ("PD357", "remote-code-required", W, "The base needs trust_remote_code (explain)."),
    ("PD358", "not-in-cache", E, "The model is neither local nor in the Hugging Face cache (explain)."),
    ("PD359", "model-config-as-adapter", E, "adapter_config.json holds a transformers model config, not an adapter's (explain)."),
    ("PD360", "no-default-targets", E, "target_modules is empty and peft has no default for this architecture (explain)."),
    ("PD361", "adapter-for-another-base", E, "The adapter's layer widths differ from the base's: trained on another base (explain)."),
    ("PD362", "lfs-pointer", E, "A file of the adapter (config or weights) is a Git LFS pointer, not its content: run git lfs pull."),
    ("PD363", "path-taken-as-repo-id", E, "A local path that does not exist was tried as a Hub repo id (explain)."),
    ("PD364", "engine-vocab-range", E, "The serving engine release serves LoRA only for some vocabulary sizes (explain)."),
    ("PD365", "engine-whole-layer", E, "The adapter saved a whole (resized) embedding or LM-head layer the engine cannot serve (explain)."),
    ("PD366", "peft-too-old-for-call", E, "The installed peft predates the PeftModel method called (explain)."),
    ("PD368", "offloaded-base", E, "The base was offloaded to CPU/disk/meta by device_map: loading or merging the adapter needs the offloaded weights (explain)."),
    ("PD369", "adapter-and-model-in-one-dir", E, "One directory holds both a model config.json and adapter_config.json: the loader refuses to guess (explain)."),
    ("PD370", "adapter-name-in-prefix", W, "The adapter's name is a part of the tuner's key prefix (lora_, ...): its weights may be re-initialised on load (explain)."),
    ("PD371", "wrapper-refused", E, "A fine-tuning wrapper (Unsloth, LLaMA-Factory, axolotl) refused the adapter or its settings (explain)."),
    ("PD380", "peft-transformers-import-fails", E, "The chosen peft release does not import with the chosen transformers release."),
    ("PD381", "transformers-axis-modules-dropped", E, "Under the chosen (peft, transformers) pair some adapted modules get no weights: they compute the base."),
    ("PD382", "transformers-axis-load-fails", E, "Under the chosen (peft, transformers) pair loading the adapter fails (keys saved under another transformers)."),
    ("PD401", "target-no-lora-support", E, "The deployment target release cannot serve LoRA adapters at all."),
    ("PD402", "target-not-lora", E, "The deployment target serves only LoRA adapters; this is another peft_type."),
    ("PD403", "target-dora", E, "The deployment target refuses DoRA or serves it as plain LoRA."),
    ("PD404", "target-rslora-scale", E, "The deployment target ignores or refuses use_rslora (fix folds it into lora_alpha)."),
    ("PD405", "target-modules-to-save", E, "The deployment target refuses or ignores modules_to_save."),
    ("PD406", "target-lora-bias", E, "The deployment target refuses or ignores lora_bias."),
    ("PD407", "target-bias", E, "The deployment target refuses or ignores trained biases (bias other than none)."),
    ("PD408", "target-rank-limit", E, "The rank exceeds the deployment target's default or largest rank limit."),
    ("PD409", "target-rank-pattern", E, "The deployment target ignores rank_pattern/alpha_pattern: other scales."),
    ("PD410", "target-embedding-lora", E, "The deployment target ignores LoRA on the input embedding."),
    ("PD411", "target-lm-head-lora", E, "The deployment target ignores LoRA on the LM head."),
    ("PD412", "target-trainable-tokens", E, "The deployment target refuses or ignores trainable tokens."),
    ("PD413", "target-base-mutating-init", E, "The deployment target refuses or misapplies an unconverted PiSSA/OLoRA/CorDA/LoftQ adapter."),
    ("PD414", "target-key-prefix", E, "The deployment target matches none of the weight keys and serves the base model."),
    ("PD415", "target-modules-ignored", E, "The deployment target ignores some adapted modules."),
    ("PD416", "target-architecture-modules", E, "The deployment target has no LoRA layer for some adapted modules of this architecture (refuses or ignores them)."),
    ("PD455", "target-engine-approximated", I, "The engine release is not a checked one; the closest older checked release stood in."),
    ("PD456", "target-feature-refused", E, "The deployment target refuses a PEFT feature it does not implement (layer_replication, aLoRA, QALoRA, ...)."),
    ("PD457", "target-engine-peft", I, "The engine release parses the config with the peft it pins; judged for that release."),
    ("PD501", "combine-rank-differs", E, "Adapters of different rank cannot be combined linearly."),
    ("PD502", "combine-modules-to-save", E, "Two adapters save the same module: they cannot be combined."),
    ("PD503", "combine-target-types", E, "target_modules given as a list in one adapter and a regex in another."),
    ("PD504", "combine-other-base", E, "The adapters were trained on different bases."),
    ("PD505", "combine-not-lora", E, "Only LoRA adapters of one peft_type can be combined with add_weighted_adapter."),
    ("PD506", "combine-target-parameters", E, "add_weighted_adapter does not support target_parameters."),
    ("PD211", "weights-not-finite", E, "The adapter's weights hold NaN or infinite values: outputs become NaN."),
    ("PD212", "adapter-untrained", E, "Every lora_B is exactly zero: the adapter computes the base model."),
    ("PD213", "modules-untrained", W, "Some adapted modules have an all-zero lora_B: they compute the base."),
    ("PD214", "weights-empty-zero3", E, "Empty tensors: saved under DeepSpeed ZeRO-3 without gathering the parameters."),
    ("PD215", "weights-longer-than-header", E, "The weights file holds bytes its header does not declare: safetensors refuses it."),
    ("PD201", "weights-missing", E, "No adapter_model.safetensors or adapter_model.bin."),
    ("PD202", "both-weight-formats", W, "Both adapter_model.safetensors and adapter_model.bin are present."),
    ("PD203", "pickle-weights", W, "adapter_model.bin is a pickle: loading it can execute code."),
    ("PD204", "weights-header-unreadable", E, "The safetensors header cannot be read."),
    ("PD205", "weights-truncated", E, "The weights file is too small to hold the tensors it declares."),
    ("PD206", "rank-mismatch", E, "A lora_A/lora_B shape does not match the declared rank."),
    ("PD207", "target-without-weights", E, "Modules the config adapts get no weights from the file: they compute the base (random with init_lora_weights false)."),
    ("PD208", "weights-outside-targets", E, "The file holds weights for modules the config does not target."),
    ("PD209", "modules-to-save-missing", E, "A module in modules_to_save has no saved weights."),
    ("PD210", "dora-mismatch", E, "use_dora and the presence of DoRA magnitude vectors disagree."),
    ("PD223", "weights-dropped-on-load", E, "Saved tensors peft drops on load (prefix, adapter name, another architecture's paths): their modules compute the base."),
    ("PD220", "target-modules-not-in-base", E, "target_modules match no module of the base's architecture: peft raises."),
    ("PD221", "layer-size-mismatch", E, "LoRA shapes disagree with the base's layer sizes (another size of the model)."),
    ("PD222", "vocabulary-not-resized", E, "Saved embedding/LM-head shapes disagree with the base's vocabulary: resize first."),
    ("PD229", "target-parameters-not-in-base", E, "target_parameters match no parameter of the base under the chosen transformers (fused experts are transformers 5's)."),
    ("PD301", "adapter-load-failed", E, "PeftModel.from_pretrained fails on this base with the installed peft."),
    ("PD302", "head-not-trained", E, "A task head is initialised at random on every load: not in the base, not in modules_to_save."),
    ("PD303", "adapter-no-op", E, "The adapter changes nothing on the probe batch (zero or no-op weights)."),
    ("PD304", "merge-parity", E, "The merged model computes something else than the base with the adapter."),
    ("PD305", "reload-parity", E, "The saved merged model, reloaded with transformers, computes something else."),
    ("PD306", "merge-not-finite", E, "Merging produced NaN or infinite weights."),
    ("PD307", "tied-weights-untied", I, "A tied embedding/output layer was adapted: the merged model is saved untied."),
    ("PD308", "not-mergeable", I, "The adapter type cannot be merged into weights: deploy it with PeftModel."),
    ("PD309", "vocab-resized", I, "The adapter carries a resized vocabulary; the base's embeddings were resized to match."),
    ("PD310", "quantized-base", W, "The base is quantized: the merge went into dequantized weights."),
    ("PD311", "tokenizer-missing", W, "No tokenizer beside the adapter or the base: the merged model is saved without one."),
    ("PD312", "adapter-small-effect", W, "The adapter changes the output less than the parity tolerance: parity proves little."),
    ("PD313", "merged-delta-missing", E, "A targeted weight of the merged model equals the base: the merge never happened there."),
    ("PD314", "merged-wrong-scale", E, "A targeted weight holds the adapter's delta at another scale (the factor says which: 0.5 for rsLoRA r=4 merged as alpha/r)."),
    ("PD315", "merged-applied-twice", E, "A targeted weight holds the adapter's delta twice (factor 2)."),
    ("PD316", "merged-delta-differs", E, "A targeted weight differs from base + delta beyond rounding, and not as a multiple of the delta."),
    ("PD317", "merged-extra-change", E, "A tensor the adapter does not change differs from the base in the merged model."),
    ("PD318", "merged-tensor-missing", E, "A tensor of the base or of the adapter's modules_to_save is missing from the merged model."),
    ("PD319", "merged-extra-tensor", W, "The merged model holds a tensor that neither the base nor the adapter has."),
    ("PD320", "merged-shape-mismatch", E, "A tensor of the merged model has another shape than base + adapter give."),
    ("PD321", "merged-copy-differs", E, "A modules_to_save module of the merged model is not the adapter's saved copy."),
]

RULES: dict[str, Rule] = {code: Rule(code, name, sev, summary) for code, name, sev, summary in sorted(_TABLE)}
assert len(RULES) == len(_TABLE), "a finding code is listed twice in _TABLE"


def rule(code: str) -> Rule:
    return RULES[code]


def markdown_table() -> str:
    """The table of finding codes: docs/findings.md, written by scripts/generate_docs.py and kept current by
    tests/test_docs.py."""
    rows = [f"| {r.code} | {r.name} | {r.severity.value} | {r.summary} |" for r in RULES.values()]
    return "\n".join(["| code | name | severity | meaning |", "|---|---|---|---|", *rows]) + "\n"
