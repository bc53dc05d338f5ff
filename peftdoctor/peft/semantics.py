"""What config keys mean when a peft release drops them: data, not branches.

The schemas say which keys each release knows and their defaults. What they cannot say is
whether losing a key changes what the adapter computes; that knowledge lives here, each
entry taken from peft's source or release notes.
"""
from __future__ import annotations

# Keys that describe the adapter but never enter its computation.
METADATA_KEYS = frozenset({
    "peft_version", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
    "runtime_config",  # LoraRuntimeConfig: placement hints, not saved meaning
    "merge_weights",  # peft<0.3: merge into the base when switching to eval(); same outputs either way
})

# Keys that only steer how a *new* adapter is initialised; a trained adapter's weights replace
# whatever they produced. (Base-mutating inits are the exception: see BASE_MUTATING_INITS.)
INIT_ONLY_KEYS = frozenset({
    "init_lora_weights", "init_weights", "init_ia3_weights", "loftq_config", "eva_config",
    "corda_config", "lora_dropout", "module_dropout", "rank_dropout", "vera_dropout",
})

# A key that means something only when its controlling key is set: (controller, its inert value).
DEPENDENT_KEYS = {
    "megatron_core": ("megatron_config", None),
    "qalora_group_size": ("use_qalora", False),
}

# What is lost when a release that does not know the key loads the config anyway.
LOSS_IF_DROPPED = {
    "use_dora": "the DoRA magnitude vectors are ignored and the weights are applied as plain LoRA: outputs change",
    "use_rslora": "scaling becomes lora_alpha/r instead of lora_alpha/sqrt(r): the update is scaled differently",
    "rank_pattern": "per-module ranks are ignored: those modules are built with rank r and their weights no longer fit",
    "alpha_pattern": "per-module alphas are ignored: those modules are scaled by lora_alpha/r instead",
    "layer_replication": "the base's layers are not replicated, so the replicated layers' adapter weights have no place",
    "lora_bias": "the bias of lora_B is ignored: outputs change",
    "target_parameters": "LoRA on parameters (e.g. MoE experts) is not applied",
    "trainable_token_indices": "the trained token embeddings are not applied",
    "exclude_modules": "excluded modules get adapter layers too; the adapter no longer matches its weights",
    "megatron_config": "the Megatron parallel layers are not built: the adapter does not fit the base",
    "use_qalora": "QALoRA's input pooling is not applied: outputs change",
    "alora_invocation_tokens": "the activated LoRA applies everywhere instead of after its invocation tokens",
    "modules_to_save": "the trained copies of those modules are not applied",
    "bias": "the trained biases are not applied",
    "fan_in_fan_out": "the weights are applied transposed",
}
DEFAULT_LOSS = "its setting is lost, so the adapter may compute something different"

# init_lora_weights values that rewrite the base weights when the adapter is created or loaded
# unconverted (peft docs: PiSSA, OLoRA, CorDA and LoftQ "modify the base model").
BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")

# Load-time refusals that live in a release's code rather than in its fields.
# (peft_type, key whose absence triggers it, first release that refuses, error text)
LOAD_REFUSALS = (
    ("OFT", "oft_block_size", "0.14.0",
     "ValueError: OFT has been updated since PEFT 0.14.0. Your trained adapter weights are incompatible "
     "with the latest version of OFT. Please retrain your adapter weights with newer PEFT versions. "
     "Alternatively, downgrade PEFT to version 0.13.0 to use the old adapter weights."),  # peft/tuners/oft/config.py: OFTConfig.check_kwargs
)

# A modules_to_save module the weights hold no copy of: up to 0.14.0 set_peft_model_state_dict loads with
# strict=False and the wrapper keeps its copy of the base's module; from 0.15.0 its AuxiliaryTrainingWrapper loop
# (peft/utils/save_and_load.py) looks each copy's tensors up by name and raises KeyError. tests/test_weights_by_release.py
# holds this against every release's wheel and runs both sides.
MODULES_TO_SAVE_KEYERROR_SINCE = "0.15.0"

# The transformers Auto class PeftModel's task types load the base with (peft's
# MODEL_TYPE_TO_PEFT_MODEL_MAPPING pairs each with a model class over this kind of base).
AUTO_CLASS_BY_TASK = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}

# Module names that are tied to each other in most decoder bases (input embedding <-> LM head).
TIED_MODULE_NAMES = frozenset({"lm_head", "embed_tokens", "wte", "embed_out", "word_embeddings", "shared",
                               "embed_in", "tok_embeddings", "output"})

# Values (not keys) that releases before the given one do not understand (peft/tuners/tuners_utils.py).
VALUE_SINCE = {("target_modules", "all-linear"): "0.8.0"}
