"""Which finding code each catalogued message means: reviewable tables, applied by the generator.

MAP rows: (package, a regex searched in the template's text, the code). Templates are written with
their holes as {name}; the first row that matches wins. AREAS then give every message no MAP row
names a verdict by where it is raised: a code that fits all of that area's refusals (peft's config
classes refuse values: PD104), or None: not an adapter problem (with the reason). A message neither
table reaches is catalogued without a verdict; a test keeps that number at zero.
"""
from __future__ import annotations

import re
from typing import Optional

MAP: tuple[tuple[str, str, str], ...] = (
    # peft: loading
    ("peft", r"^Can't find '?adapter_config\.json'? at|^Can't find config\.json at", "PD004"),
    ("peft", r"^Unexpected keyword arguments (?:\[|\{\w+\} for class)", "PD106"),
    ("peft", r"^Invalid task type", "PD116"),
    ("peft", r"OFT has been updated since PEFT 0\.14\.0", "PD114"),
    ("peft", r"^Found missing adapter keys while loading the checkpoint", "PD355"),
    # peft: building the model
    ("peft", r"^Target modules? \{\w+\} not found in the base model", "PD350"),
    ("peft", r"^Please specify `target_modules` in `peft_config`", "PD360"),
    # peft: merging and combining
    ("peft", r"^Cannot merge \w+ layers when the model is (?:loaded in \S+ mode|gptq quantized)", "PD354"),
    ("peft", r"^Merge lora module to \S+ linear may get different generations", "PD354"),
    ("peft", r"^NaNs detected in the merged weights", "PD356"),
    ("peft", r"^All adapters must have the same r value", "PD501"),
    ("peft", r"^Cannot add weighted adapters (?:if they target|targeting) the same module with modules_to_save",
     "PD502"),
    ("peft", r"^all adapter configs should follow the same target modules type", "PD503"),
    # vLLM / SGLang: serving
    ("vllm", r"^LoRA rank \{\w+\} is greater than max_lora_rank", "PD408"),
    ("vllm", r"^\{\w+\} is unsupported LoRA weight|^lora \{\w+\} is not supported", "PD405"),
    # an architecture, not a runtime (V1, OpenVINO, a graph runner): only "{model} does not support LoRA"
    ("vllm", r"^(?:Model )?\{\w+\} does not support LoRA", "PD416"),
    ("vllm", r"only supports adding LoRA to language model", "PD415"),
    ("vllm", r"does not (?:yet )?support DoRA", "PD403"),
    ("vllm", r"only supports modules_to_save being None", "PD405"),
    ("vllm", r"does not support LoRA bias", "PD406"),
    ("vllm", r"^Adapter bias", "PD407"),
    ("vllm", r"does not support init_lora_weights", "PD413"),
    ("vllm", r"vocab size must be", "PD364"),
    ("vllm", r"expected target modules in \{\w+\} but received", "PD416"),
    ("sglang", r"contains target modules \{\w+\} that are not included in the specified --lora-target-modules"
               r"|^Cannot find target module name for|does not recognize target_modules="
               r"|only supports inferring LoRA target modules when a list", "PD416"),
    ("sglang", r"with rank \{\w+\} is incompatible with the current LoRA memory pool", "PD408"),
    ("peft", r"^Target module \{\w+\} is not (?:supported|a plain)", "PD301"),
    ("peft", r"^Requested bias: ", "PD104"),
    ("peft", r"^Adapter name '?\{\w+\}'? should not be contained in the prefix", "PD370"),
    ("peft", r"^Disk offloading currently only supported for safetensors", "PD368"),
    ("transformers", r"^The current `device_map` had weights offloaded to the disk", "PD368"),
    ("transformers", r"^Incorrect path_or_model_id", "PD363"),
    ("vllm", r"No adapter found for", "PD004"),
    ("unsloth", r"Your repo has a LoRA adapter and a base model", "PD369"),
    # safetensors: the header
    ("safetensors", r"deserializing header|invalid JSON in header|invalid UTF-8 in header|header too|HeaderToo"
                    r"|InvalidHeader|MetadataIncompleteBuffer|incomplete metadata", "PD204"),
)


# The fine-tuning wrappers catalogued (scripts/generate_messages.py reads their wheels).
WRAPPERS = ("unsloth", "unsloth_zoo", "llamafactory", "axolotl")

# (package, a regex of the file it is raised in, a regex of its kind, the code or None, why).
AREAS: tuple[tuple[str, str, str, Optional[str], str], ...] = (
    ("peft", r"/config\.py$|^peft/config\.py$", r"^raise|^assert", "PD104",
     "a config class refusing a value: the adapter_config.json (or the call) holds a value this release rejects"),
    ("peft", r".", r"^raise|^assert", "PD301", "peft refusing the adapter, its base or the call"),
    ("peft", r".", r"^warn|^log\.", None, "advice while loading or training: peft goes on"),
    ("transformers", r"integrations/peft\.py$|utils/peft_utils\.py$", r"^raise|^assert", "PD301",
     "transformers' PEFT integration refusing the adapter or the call"),
    ("transformers", r".", r".", None, "loading or configuring the base model, not the adapter"),
    ("bitsandbytes", r".", r".", None, "quantization kernels and their inputs"),
    ("safetensors", r".", r".", "PD204", "the weights file's header cannot be read"),
    ("vllm", r".", r".", None, "the engine's own LoRA machinery (kernels, batching, its own settings)"),
    ("sglang", r".", r".", None, "the engine's own LoRA machinery (kernels, batching, its own settings)"),
    *((w, r"kernels|monkeypatch|_native\.py|fsdp|optimizers|scattermoe|sonicmoe|grouped|ring_attn", r".", None,
       "the wrapper's kernels, patches and parallel training, not an adapter's files") for w in WRAPPERS),
    *((w, r".", r"^raise|^assert", "PD371", "the wrapper refusing the adapter or its settings") for w in WRAPPERS),
    *((w, r".", r".", None, "the wrapper's advice: it goes on") for w in WRAPPERS),
)


def code_for(package: str, template: str) -> Optional[str]:
    for pkg, pattern, code in MAP:
        if pkg == package and re.search(pattern, template):
            return code
    return None


def verdict(package: str, template: str, file: str, kind: str) -> tuple[Optional[str], Optional[str]]:
    """(code, area): the MAP code, else the first AREAS row's code and why; (None, None): no verdict."""
    code = code_for(package, template)
    if code is not None:
        return code, None
    for pkg, file_re, kind_re, area_code, why in AREAS:
        if pkg == package and re.search(file_re, file) and re.search(kind_re, kind):
            return area_code, why
    return None, None
