"""vLLM: the facts read from each release's wheel and the rows they make (see spec.py, extractors.py)."""
from __future__ import annotations

from extractors import Case, Fact
from spec import MERGE, MERGE_DORA, RESAVE, EngineSpec, Row, Rows, static

PH = ("vllm/lora/peft_helper.py",)
MODELS = ("vllm/lora/models.py", "vllm/lora/lora_model.py", "vllm/lora/model_manager.py")
CONFIG = ("vllm/config/lora.py", "vllm/config/__init__.py", "vllm/config.py")
ARGS = ("vllm/engine/arg_utils.py",)
LLAVA = ("vllm/model_executor/models/llava.py",)
# Every LoRA module but PEFTHelper: a feature read here, and not refused or applied in PEFTHelper, is one the
# rows below do not describe, and the generator stops (no row matches "read_elsewhere").
LORA = ("vllm/lora/models.py", "vllm/lora/lora_model.py", "vllm/lora/model_manager.py", "vllm/lora/utils.py",
        "vllm/lora/worker_manager.py", "vllm/lora/request.py", "vllm/lora/lora.py", "vllm/lora/lora_weights.py")

# Keys PEFTHelper refuses whenever they are set, with no feature of their own (features.refused_key): one
# fact and one row each. A refusal of this shape for a key listed nowhere here stops the generator.
REFUSED_KEYS = ("alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora")
_KNOWN_REFUSALS = ("use_rslora", "use_dora", "modules_to_save", "lora_bias", *REFUSED_KEYS)
_REFUSAL = r'if self\.{key}:\s*\n\s*error_msg\.append\(\s*"(?P<text>[^"]+)"'

FACTS = {
    "lora": Fact((Case(True, "exists", ("vllm/lora/models.py", "vllm/lora/lora_model.py")),), False),
    "peft_helper": Fact((Case(True, "exists", PH),), False),
    "rslora": Fact((Case("refused", "contains", PH, r'"(?P<text>vLLM does not yet support RSLoRA\.)"'),
                    Case("scaled", "contains", PH, r"lora_alpha\s*/\s*math\.sqrt|alpha\s*/\s*math\.sqrt"),
                    Case("read_elsewhere", "contains", LORA, r"rslora")),
                   "not_read"),
    "dora": Fact((Case("refused", "contains", PH, r'"(?P<text>vLLM does not yet support DoRA\.)"'),
                  Case("read_elsewhere", "contains", LORA, r"use_dora|magnitude")), "not_read"),
    "modules_to_save": Fact((
        Case("heads_only", "contains", PH, r'(?P<text>vLLM only supports modules_to_save being either None)'),
        Case("refused", "contains", PH, r'"(?P<text>vLLM only supports modules_to_save being None\.)"')),
        "not_read"),
    "lora_bias": Fact((
        Case("refused", "contains", PH, r'"(?P<text>vLLM does not support LoRA bias \(lora_bias\)\.)"'),
        Case("flag", "contains", MODELS, r'f?"(?P<text>Adapter bias cannot be used for) ')), "not_read"),
    "bias": Fact((Case("refused", "contains", PH, r'"(?P<text>Adapter bias is not supported\.)"'),
                  Case("refused_without_flag", "contains", PH,
                       r'"(?P<text>Adapter bias cannot be used without bias_enabled\.)"')), "not_read"),
    "max_lora_ranks": Fact((Case(None, "assign", CONFIG, "MaxLoRARanks"),
                            Case(None, "assign", CONFIG, "possible_max_ranks")), None),
    "max_lora_rank_default": Fact((Case(None, "assign", ARGS, "max_lora_rank"),
                                   Case(None, "assign", CONFIG, "max_lora_rank")), None),
    "rank_pattern": Fact((Case("applied", "contains", PH, r"def get_rank_and_scaling"),
                          Case("read_elsewhere", "contains", LORA, r"rank_pattern|alpha_pattern")), "not_read"),
    "init_lora_weights": Fact((Case("refused", "contains", PH, r'"(?P<text>vLLM does not support init_lora_weights=)'),
                               Case("read_elsewhere", "contains", LORA, r"init_lora_weights")), "not_read"),
    "vlm_key_layout": Fact((Case("mapped", "contains", LLAVA, r'"model\.language_model\."'),), "not_mapped"),
    **{f"refuses_{key}": Fact((Case("refused", "contains", PH, _REFUSAL.format(key=key)),), "not_read")
       for key in REFUSED_KEYS},
    "unlisted_refusal": Fact((Case("found", "contains", PH, _REFUSAL.format(
        key=f"(?!(?:{'|'.join(_KNOWN_REFUSALS)})\\b)\\w+")),), "none"),
}

_RANK_FIX = "start vLLM with the --max-lora-rank named above"
_RANK_MAX_FIX = "retrain with a smaller rank, serve with a vLLM release that accepts larger ranks, or merge the adapter"
_RANK_PARAMS = {"params": {"server_flag": "--max-lora-rank"},
                "params_from": {"default": "max_lora_rank_default", "allowed": "max_lora_ranks"}}
_RANK_CITE = "{where} (the check: vllm/lora/worker_manager.py before PEFTHelper, PEFTHelper.validate_legal after)"

SLOTS = (
    Rows("any_adapter", ("lora",), (
        ("False", Row("vllm-no-lora", "refuses_at_load", "vLLM releases before 0.3.0 have no LoRA support",
                      "serve with vllm>=0.3.0, or merge the adapter into the base",
                      cite="the wheel has no vllm/lora/models.py")),
        ("True", None)), gate=None),
    Rows("not_lora", ("lora",), (
        ("*", Row("vllm-not-lora", "refuses_at_load",
                  "vLLM serves only LoRA adapters; the config lacks r/lora_alpha or they mean something else",
                  "merge the adapter into the base (peftdoctor verify) and serve the merged model",
                  cite="{where} (LoRAModel.from_local_checkpoint reads config['r'] and "
                       "config['lora_alpha']); from 0.6.5 vllm/lora/peft_helper.py PEFTHelper.from_dict raises "
                       "'Missing required configuration fields'")),)),
    Rows("rslora", ("rslora",), (
        ("not_read", Row("vllm-rslora-ignored", "different_scale",
                         "vLLM ignores use_rslora and scales by lora_alpha/r, a factor sqrt(r) weaker than peft",
                         "run `peftdoctor fix --target vllm`: rsLoRA is folded into lora_alpha (lora_alpha*sqrt(r)), "
                         "exact under any scaling", cite="vllm/lora/ has no PEFTHelper; use_rslora is never read",
                         rewrite="fold_rslora")),
        ("refused", Row("vllm-rslora-refused", "refuses_at_load", "vLLM raises '{rslora}'",
                        "run `peftdoctor fix --target vllm`: rsLoRA is folded into lora_alpha and use_rslora dropped; "
                        "or serve with vllm>=0.7.0", rewrite="fold_rslora")),
        ("scaled", Row("vllm-rslora-ok", "ok", "vLLM scales by lora_alpha/sqrt(r) when use_rslora is set", "")))),
    Rows("dora", ("dora",), (
        ("not_read", Row("vllm-dora-unsupported-weight", "refuses_at_load",
                         "vLLM does not know DoRA: the lora_magnitude_vector tensors fail with 'is unsupported LoRA "
                         "weight'", MERGE_DORA, cite="vllm/lora/utils.py (parse_fine_tuned_lora_name); no PEFTHelper")),
        ("refused", Row("vllm-dora-refused", "refuses_at_load", "vLLM raises '{dora}'",
                        MERGE_DORA)))),
    Rows("modules_to_save", ("modules_to_save",), (
        ("not_read", Row("vllm-modules-to-save-unsupported-weight", "refuses_at_load",
                         "vLLM refuses modules_to_save: the saved full modules fail with 'is unsupported LoRA weight'",
                         f"{MERGE}; or retrain without modules_to_save (LoRA on lm_head/embed_tokens instead of "
                         "full copies)", cite="vllm/lora/utils.py (parse_fine_tuned_lora_name); no PEFTHelper")),
        ("refused", Row("vllm-modules-to-save-refused", "refuses_at_load", "vLLM raises '{modules_to_save}'",
                        f"{MERGE}; or retrain without modules_to_save (LoRA on lm_head/embed_tokens instead of "
                        "full copies)")),
        ("heads_only", Row("vllm-modules-to-save-non-head", "refuses_at_load",
                           "vLLM accepts modules_to_save only as classifier/score heads of classification models "
                           "('{modules_to_save} or [\"classifier\", \"score\"]')",
                           f"{MERGE}; or retrain without modules_to_save", feature="modules_to_save_non_head")))),
    Rows("lora_bias", ("lora_bias", "peft_helper"), (
        ("not_read|False", Row("vllm-lora-bias-unsupported-weight", "refuses_at_load",
                               "vLLM does not know LoRA biases: lora_B.bias tensors fail with 'is unsupported LoRA "
                               "weight'", "serve with vllm>=0.6.4,<0.11.1 and --enable-lora-bias, or merge the "
                               "adapter", cite="vllm/lora/utils.py (parse_fine_tuned_lora_name has no bias branch)")),
        ("flag|*", Row("vllm-lora-bias-flag", "refuses_at_load",
                       "vLLM raises '{lora_bias} ... without --enable-lora-bias'",
                       "start vLLM with --enable-lora-bias (or merge the adapter)")),
        ("not_read|True", Row("vllm-lora-bias-refused", "refuses_at_load",
                              "vLLM has no LoRA bias support: lora_B.bias tensors fail with 'is unsupported LoRA "
                              "weight'", f"{MERGE}, or retrain with lora_bias=false",
                              cite="vllm/lora/utils.py (parse_fine_tuned_lora_name has no bias branch; "
                                   "the --enable-lora-bias check is gone)")),
        ("refused|True", Row("vllm-lora-bias-refused-2", "refuses_at_load", "vLLM raises '{lora_bias}'",
                             f"{MERGE}, or retrain with lora_bias=false")))),
    Rows("bias", ("bias",), (
        ("not_read", Row("vllm-bias-ignored", "ignores",
                         "vLLM does not read `bias`: trained base biases are not applied (and any saved bias tensor "
                         "fails to load)", f"{MERGE}, or retrain with bias='none'",
                         cite="vllm/lora/models.py (from_local_checkpoint never reads config['bias'])")),
        ("refused_without_flag", Row("vllm-bias-refused", "refuses_at_load",
                                     "vLLM raises '{bias}' (and --enable-lora-bias adds LoRA biases, not peft's "
                                     "trained base biases)", f"{MERGE}, or retrain with bias='none'")),
        ("refused", Row("vllm-bias-refused-2", "refuses_at_load", "vLLM raises '{bias}'",
                        f"{MERGE}, or retrain with bias='none'")))),
    Rows("rank_above_default", ("max_lora_ranks", "max_lora_rank_default"), (
        ("*", (Row("vllm-rank-default-{run}", "refuses_at_load",
                   "vLLM raises 'LoRA rank R is greater than max_lora_rank {max_lora_rank_default}.' at the "
                   "default --max-lora-rank (a server started with another names that one)", _RANK_FIX,
                   cite=_RANK_CITE, **_RANK_PARAMS),
               Row("vllm-rank-max-{run}", "refuses_at_load",
                   "no --max-lora-rank this vLLM release accepts is large enough", _RANK_MAX_FIX,
                   feature="rank_above_max", **_RANK_PARAMS))),)),
    Rows("rank_pattern", ("rank_pattern",), (
        ("not_read", Row("vllm-rank-pattern-ignored", "different_scale",
                         "vLLM scales every module by the global lora_alpha/r and ignores rank_pattern/alpha_pattern",
                         "serve with vllm>=0.32.0, or merge the adapter (no config rewrite can carry per-module "
                         "scales there)", cite="vllm/lora/ reads no rank_pattern/alpha_pattern")),
        ("applied", Row("vllm-rank-pattern-ok", "ok",
                        "vLLM applies rank_pattern/alpha_pattern with peft's matching rule", "")))),
    static("vllm", "vllm-embedding-ok"),
    static("vllm", "vllm-lm-head-ok"),
    static("vllm", "vllm-trainable-tokens"),
    Rows("base_mutating_init", ("init_lora_weights",), (
        ("not_read", Row("vllm-base-mutating-init-ignored", "ignores",
                         "vLLM applies the adapter to the original base, but this adapter was trained against a base "
                         "modified by its init", RESAVE, cite="vllm/lora/ never reads init_lora_weights")),
        ("refused", Row("vllm-base-mutating-init-refused", "refuses_at_load", "vLLM raises '{init_lora_weights}...'",
                        RESAVE)))),
    *(Rows("refused_key", (f"refuses_{key}",), (
        ("not_read", None),
        ("refused", Row(f"vllm-{key.replace('_', '-')}-refused", "refuses_at_load", f"vLLM raises '{{refuses_{key}}}'",
                        f"{MERGE}, or retrain without {key}", params={"key": key})))) for key in REFUSED_KEYS),
    Rows("refused_key", ("unlisted_refusal",), (("none", None),)),
    Rows("vlm_new_key_layout", ("vlm_key_layout",), (
        ("not_mapped", Row("vllm-vlm-new-layout", "serves_base",
                           "vLLM's multimodal models name the text model language_model.model.*; keys saved as "
                           "model.language_model.* (transformers>=4.52) match no module and the LoRA is silently not "
                           "applied", "serve with vllm>=0.9.2 (Llava, Qwen2-VL map model.language_model.*), or rename "
                           "the keys to base_model.model.language_model.model.*",
                           cite="vllm/model_executor/models/llava.py has no 'model.language_model.' mapping")),
        ("mapped", None))),
    static("vllm", "vllm-arch-modules-ignored"),
    static("vllm", "vllm-arch-modules-refused-a"),
    static("vllm", "vllm-arch-modules-refused-b"),
    static("vllm", "vllm-arch-modules-refused-c"),
    static("vllm", "vllm-arch-modules-refused-d"),
)

RELEASES = ("0.2.7", "0.3.0", "0.3.1", "0.3.2", "0.3.3", "0.4.0", "0.4.1", "0.4.2", "0.4.3", "0.5.0", "0.5.1",
            "0.5.2", "0.5.3", "0.5.4", "0.5.5", "0.6.0", "0.6.1", "0.6.2", "0.6.3", "0.6.4", "0.6.5", "0.6.6",
            "0.7.0", "0.7.1", "0.7.2", "0.7.3", "0.8.0", "0.8.1", "0.8.2", "0.8.3", "0.8.4", "0.8.5", "0.9.0",
            "0.9.0.1", "0.9.1", "0.9.2", "0.10.0", "0.10.1", "0.10.1.1", "0.10.2", "0.11.0", "0.11.1", "0.11.2",
            "0.12.0", "0.13.0", "0.14.0", "0.14.1", "0.15.0", "0.15.1", "0.16.0", "0.17.0", "0.17.1", "0.18.0",
            "0.18.1", "0.19.0", "0.19.1", "0.20.0", "0.20.1", "0.20.2", "0.21.0", "0.22.0", "0.22.1", "0.23.0",
            "0.24.0", "0.25.0", "0.25.1", "0.26.0", "0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0",
            "0.32.0", "0.33.0", "0.34.0")

SPEC = EngineSpec(
    "vllm", "vLLM", "vllm-project/vllm", "v{version}",
    "Generated by scripts/generate_engines.py from the released vllm wheels' source (facts in "
    "scripts/engines/facts/vllm.json); a range ending in a release means the next checked release changed. "
    "Hand-cited rows (read by a person from the same wheels, not re-derived): vllm-embedding-ok, vllm-lm-head-ok, "
    "vllm-trainable-tokens and the vllm-arch-modules-* rows.",
    RELEASES, SLOTS)
