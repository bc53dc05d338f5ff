"""TGI: the facts read from each release's git tag and the rows they make (see spec.py, extractors.py).

TGI publishes no wheel, so its files come from a clone with the release tags (sources.GIT). TGI parses
adapter_config.json with peft's own LoraConfig (adapters/lora.py), so the peft it pins decides which configs
it can read at all: the pin is a fact of every release and the table lists it (peft_pins).
"""
from __future__ import annotations

from extractors import Case, Fact
from spec import EngineSpec, Row, Rows, static

SERVER = "server/text_generation_server/"
LORA = (f"{SERVER}adapters/lora.py",)

FACTS = {
    "lora": Fact((Case(True, "exists", LORA),), False),
    "peft_config_class": Fact((Case("peft", "contains", LORA, r"from peft import (?P<text>LoraConfig) as _LoraConfig"),),
                              "own"),
    "peft_pin": Fact((Case(None, "contains", ("server/requirements_cuda.txt",), r"(?m)^peft==(?P<text>[^\s;]+)"),
                      Case(None, "contains", ("server/pyproject.toml",), r'(?m)^peft = \{ ?version = "(?P<text>[^"]+)"'),
                      Case(None, "contains", ("server/pyproject.toml",), r'"peft(?P<text>[<>=~^!][^"]*)"')), None),
    "rslora": Fact((Case("scaled", "contains", LORA, r"return lora_alpha / \(r\*\*0\.5\)"),
                    Case("read", "contains", LORA, r"rslora")), "not_read"),
    "dora": Fact((Case("read", "contains", LORA, r"use_dora|magnitude"),), "not_read"),
    "rank_pattern": Fact((Case("read", "contains", LORA, r"rank_pattern|alpha_pattern"),), "not_read"),
    "adapter_layers": Fact((Case(None, "assign", (f"{SERVER}models/__init__.py",), "adapter_layers"),
                            Case(None, "assign", (f"{SERVER}models/flash_causal_lm.py", f"{SERVER}models/flash_llama.py"),
                                 "ADAPTER_LAYERS")), None),
}

_MERGE = "merge the adapter into the base and serve the merged model"
SLOTS = (
    Rows("any_adapter", ("lora",), (
        ("False", Row("tgi-no-lora", "refuses_at_load",
                      "TGI releases before 2.1.0 have no LoRA adapter support (LORA_ADAPTERS)",
                      "serve with TGI>=2.1.0, or merge the adapter into the base",
                      cite="the tag has no server/text_generation_server/adapters/lora.py")),
        ("True", None)), gate=None),
    Rows("not_lora", ("peft_config_class",), (
        ("peft", Row("tgi-not-lora", "serves_base",
                     "TGI maps only lora_A/lora_B weights: a non-LoRA adapter fails in peft's LoraConfig or applies "
                     "nothing", _MERGE, cite="{where} (LoraConfig.load parses the config with peft's {peft_config_class}"
                                            "; map_weights_for_model maps lora_A/lora_B only)")),)),
    Rows("rslora", ("rslora",), (
        ("scaled", Row("tgi-rslora-ok", "ok", "TGI scales by lora_alpha/sqrt(r) when use_rslora is set", "")),)),
    Rows("dora", ("dora",), (
        ("not_read", Row("tgi-dora-ignored", "ignores",
                         "TGI does not read use_dora: the magnitude vectors are left unused and the adapter is served "
                         "as plain LoRA", "merge the DoRA adapter into the base and serve the merged model, or retrain "
                         "with use_dora=false", cite="server/text_generation_server/adapters/lora.py never reads "
                                                     "use_dora (LoraConfig fields r, target_modules, fan_in_fan_out, "
                                                     "lora_alpha, use_rslora)")),)),
    static("tgi", "tgi-modules-to-save-ignored"),
    static("tgi", "tgi-lora-bias-ignored"),
    static("tgi", "tgi-bias-ignored"),
    Rows("rank_pattern", ("rank_pattern",), (
        ("not_read", Row("tgi-rank-pattern-ignored", "different_scale",
                         "TGI scales every module by the global lora_alpha/r and ignores rank_pattern/alpha_pattern",
                         _MERGE, cite="server/text_generation_server/adapters/lora.py never reads rank_pattern/"
                                      "alpha_pattern (get_scaling_factor(config.lora_alpha, config.r))")),)),
    static("tgi", "tgi-embedding-ignored"),
    static("tgi", "tgi-lm-head-ignored"),
    static("tgi", "tgi-trainable-tokens-ignored"),
    static("tgi", "tgi-base-mutating-init-ignored"),
    static("tgi", "tgi-keys-outside-layers"),
    static("tgi", "tgi-some-keys-outside-layers"),
    Rows("target_modules_unsupported", ("adapter_layers",), (
        ("*", Row("tgi-modules-unsupported-{run}", "ignores",
                  "TGI applies LoRA only to its adapter layers; the other modules' weights are unused",
                  "retrain on supported modules, or merge the adapter", params_from={"supported": "adapter_layers"})),)),
)

RELEASES = ("2.0.4", "2.1.0", "2.2.0", "2.3.0", "2.4.0", "3.0.0", "3.0.1", "3.0.2", "3.1.0", "3.3.0", "3.3.7")

SPEC = EngineSpec(
    "tgi", "TGI", "huggingface/text-generation-inference", "v{version}",
    "Generated by scripts/generate_engines.py from text-generation-inference's source at each release's git tag "
    "(TGI publishes no wheel; facts in scripts/engines/facts/tgi.json). Ranks are padded for its kernels and never "
    "refused. Hand-cited rows (read by a person at the same tags, not re-derived): "
    "tgi-modules-to-save-ignored, tgi-lora-bias-ignored, tgi-bias-ignored, tgi-embedding-ignored, "
    "tgi-lm-head-ignored, tgi-trainable-tokens-ignored, tgi-base-mutating-init-ignored, tgi-keys-outside-layers, "
    "tgi-some-keys-outside-layers. peft_pins: the peft each release installs (server/requirements_cuda.txt, else "
    "the server/pyproject.toml range), which parses adapter_config.json there.",
    RELEASES, SLOTS, source_kind="source at the git tag", extra={"peft_pins": "peft_pin"})
