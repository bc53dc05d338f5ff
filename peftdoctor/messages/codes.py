"""Which finding code each catalogued message means: a reviewable table, applied by the generator.

Each row: (package, a regex searched in the template's text, the code). Templates are written with
their holes as {name}; the first row that matches wins. A message no row maps is still catalogued
(its releases are known) but explain does not claim it.
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
    # safetensors: the header
    ("safetensors", r"deserializing header|invalid JSON in header|invalid UTF-8 in header|header too|HeaderToo"
                    r"|InvalidHeader|MetadataIncompleteBuffer|incomplete metadata", "PD204"),
)


def code_for(package: str, template: str) -> Optional[str]:
    for pkg, pattern, code in MAP:
        if pkg == package and re.search(pattern, template):
            return code
    return None
