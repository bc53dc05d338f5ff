"""SGLang: the facts read from each release's wheel and the rows they make (see spec.py, extractors.py).

SGLang's LoRA code reads few config keys, so most facts here are "never read anywhere in sglang/srt/lora/":
a key that a later release starts to read matches no row and stops the generator until a row says what
that release does with it.
"""
from __future__ import annotations

from extractors import Case, Fact
from spec import MERGE, MERGE_DORA, RESAVE, EngineSpec, Row, Rows, static

LORA_DIR = "sglang/srt/lora/"
LORA = tuple(f"{LORA_DIR}{name}.py" for name in (
    "lora", "lora_config", "lora_manager", "utils", "layers", "mem_pool", "lora_registry", "lora_overlap_loader"))
ADAPTER = (f"{LORA_DIR}lora.py",)


def _unread(pattern: str) -> Fact:
    return Fact((Case("read", "contains", LORA, pattern),), "not_read")


FACTS = {
    "lora": Fact((Case(True, "exists", ADAPTER),), False),
    "scaling": Fact((Case("alpha_over_r", "contains", ADAPTER,
                          r"(?P<text>self\.scaling(?:: float)? = self\.config\.lora_alpha / self\.config\.r)"),),
                    "other"),
    "rslora": _unread(r"rslora"),
    "dora": Fact((Case("refused", "contains", (f"{LORA_DIR}lora_manager.py",),
                       r"(?P<text>LoRA serving currently doesn't support DoRA adapters)"),
                  Case("read", "contains", LORA, r"use_dora|magnitude")), "not_read"),
    "embedding_layers": Fact((Case("applied", "contains", ADAPTER, r"self\.embedding_layers\["),), "not_read"),
    "modules_to_save": _unread(r"modules_to_save"),
    "lora_bias": _unread(r"lora_bias"),
    "rank_pattern": _unread(r"rank_pattern|alpha_pattern"),
    "trainable_tokens": _unread(r"token_adapter|trainable_token"),
    "init_lora_weights": _unread(r"init_lora_weights"),
    # LoRAMemoryPool.can_support: an adapter whose r exceeds the pool's max_lora_rank is refused on load
    # (LoRAManager.validate_new_adapter raises); the pool's rank is --max-lora-rank, else the largest r among
    # the adapters given at start-up.
    "rank_limit": Fact((Case("pool", "contains", (f"{LORA_DIR}mem_pool.py",),
                             r"(?P<text>if config\.r > self\.max_lora_rank)"),), "none"),
}

SLOTS = (
    Rows("any_adapter", ("lora",), (
        ("False", Row("sglang-no-lora", "refuses_at_load", "SGLang releases before 0.3.1 have no LoRA support",
                      "serve with sglang>=0.3.1, or merge the adapter into the base",
                      cite="the wheel has no sglang/srt/lora/lora.py")),
        ("True", None)), gate=None),
    static("sglang", "sglang-not-lora"),
    Rows("rslora", ("rslora", "scaling"), (
        ("not_read|alpha_over_r", Row("sglang-rslora-ignored", "different_scale",
                                      "SGLang ignores use_rslora and scales by lora_alpha/r, a factor sqrt(r) weaker "
                                      "than peft", "run `peftdoctor fix --target sglang`: rsLoRA is folded into "
                                      "lora_alpha (lora_alpha*sqrt(r)), exact under any scaling",
                                      cite="sglang/srt/lora/ never reads use_rslora; {where} ('{scaling}')",
                                      rewrite="fold_rslora", cite_facts=("scaling",))),)),
    Rows("dora", ("dora",), (
        ("not_read", Row("sglang-dora-ignored", "ignores",
                         "SGLang does not read use_dora: the magnitude vectors are dropped and the adapter is served "
                         "as plain LoRA", MERGE_DORA, cite="sglang/srt/lora/ never reads use_dora")),
        ("refused", Row("sglang-dora-refused", "refuses_at_load", "SGLang raises '{dora}'",
                        MERGE_DORA)))),
    Rows("modules_to_save", ("modules_to_save",), (
        ("not_read", Row("sglang-modules-to-save-ignored", "ignores",
                         "SGLang never reads modules_to_save: the trained full copies are not applied", MERGE,
                         cite="sglang/srt/lora/ never reads modules_to_save")),)),
    Rows("lora_bias", ("lora_bias",), (
        ("not_read", Row("sglang-lora-bias-ignored", "ignores", "SGLang has no LoRA bias: lora_B biases are not applied",
                         f"{MERGE}, or retrain with lora_bias=false", cite="sglang/srt/lora/ never reads lora_bias")),)),
    static("sglang", "sglang-bias-ignored"),
    Rows("rank_above_server_limit", ("rank_limit",), (
        ("pool", Row("sglang-rank-server-limit", "refuses_at_load",
                     "SGLang raises 'LoRA adapter NAME with rank R is incompatible with the current LoRA memory pool "
                     "configuration' for a rank above its --max-lora-rank (without the flag: the largest rank among "
                     "the adapters given at start-up)", "start SGLang with the --max-lora-rank named above",
                     cite="{where} (the refusal: sglang/srt/lora/lora_manager.py LoRAManager.validate_new_adapter)",
                     params={"server_flag": "--max-lora-rank"})),
        ("none", None))),
    Rows("rank_pattern", ("rank_pattern", "scaling"), (
        ("not_read|alpha_over_r", Row("sglang-rank-pattern-ignored", "different_scale",
                                      "SGLang scales every module by the global lora_alpha/r and ignores "
                                      "rank_pattern/alpha_pattern", MERGE,
                                      cite="sglang/srt/lora/ never reads rank_pattern/alpha_pattern; {where} "
                                           "(one self.scaling per adapter)", cite_facts=("scaling",))),)),
    Rows("embedding_lora", ("embedding_layers",), (
        ("not_read", Row("sglang-embedding-ignored", "ignores",
                         "SGLang applies LoRA only inside decoder layers: embedding LoRA weights are dropped",
                         "serve with sglang>=0.5.7, or merge the adapter",
                         cite="sglang/srt/lora/lora.py (weights without a layer id are skipped; no embedding_layers)")),
        ("applied", Row("sglang-embedding-ok", "ok", "SGLang applies LoRA on embed_tokens", "")))),
    Rows("lm_head_lora", ("embedding_layers",), (
        ("not_read", Row("sglang-lm-head-ignored", "ignores",
                         "SGLang applies LoRA only inside decoder layers: lm_head LoRA weights are dropped",
                         "serve with sglang>=0.5.7, or merge the adapter",
                         cite="sglang/srt/lora/lora.py (weights without a layer id are skipped; no embedding_layers)")),
        ("applied", Row("sglang-lm-head-ok", "ok", "SGLang applies LoRA on lm_head", "")))),
    Rows("trainable_tokens", ("trainable_tokens",), (
        ("not_read", Row("sglang-trainable-tokens-ignored", "ignores",
                         "SGLang does not know trainable tokens: the token deltas are not applied", MERGE,
                         cite="sglang/srt/lora/ has no token_adapter handling")),)),
    Rows("base_mutating_init", ("init_lora_weights",), (
        ("not_read", Row("sglang-base-mutating-init-ignored", "ignores",
                         "SGLang applies the adapter to the original base, but this adapter was trained against a base "
                         "modified by its init", RESAVE, cite="sglang/srt/lora/ never reads init_lora_weights")),)),
    static("sglang", "sglang-vlm-key-prefix-ok"),
)

RELEASES = ("0.3.0", "0.3.1", "0.3.2", "0.3.3", "0.3.4", "0.3.5", "0.3.6", "0.4.0", "0.4.1", "0.4.2", "0.4.3",
            "0.4.4", "0.4.5", "0.4.6", "0.4.7", "0.4.8", "0.4.9", "0.4.10", "0.5.1", "0.5.2", "0.5.3", "0.5.4",
            "0.5.5", "0.5.6", "0.5.7", "0.5.8", "0.5.9", "0.5.10", "0.5.11", "0.5.12", "0.5.13", "0.5.14", "0.5.15",
            "0.5.16", "0.5.17", "0.5.18", "0.5.19", "0.5.20", "0.5.21", "0.5.22", "0.5.23")

SPEC = EngineSpec(
    "sglang", "SGLang", "sgl-project/sglang", "v{version}",
    "Generated by scripts/generate_engines.py from the released sglang wheels' source (facts in "
    "scripts/engines/facts/sglang.json). Hand-cited rows (read by a person from the same wheels, not re-derived): "
    "sglang-not-lora, sglang-bias-ignored, sglang-vlm-key-prefix-ok. Rank limits are judged only against a "
    "--max-lora-rank the user names (without it SGLang takes the largest rank loaded at start-up). VLM key prefixes are (sglang-vlm-key-prefix-ok); whether a "
    "given multimodal model class takes LoRA at all, and LoRA weights on a vision tower, are not.",
    RELEASES, SLOTS)
