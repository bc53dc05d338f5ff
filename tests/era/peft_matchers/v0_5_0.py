# LoraModel._check_target_module_exists copied from huggingface/peft v0.5.0 (4df9c5a243194b03e703c1dd526d64163f9b4fd2),
# src/peft/tuners/lora.py (Apache-2.0), dedented and given the later name, for tests/test_targeting.py.
# COMMON_LAYERS_PATTERN from src/peft/utils/other.py of the same tag. Do not edit.
# ruff: noqa: W605  (peft wrote these regexes in plain strings; kept as they were)
import re

COMMON_LAYERS_PATTERN = ["layers", "h", "block", "blocks", "layer"]


def check_target_module_exists(lora_config, key):
    if isinstance(lora_config.target_modules, str):
        target_module_found = re.fullmatch(lora_config.target_modules, key)
    else:
        target_module_found = any(
            re.match(f".*\.{target_key}$", key) for target_key in lora_config.target_modules
        ) or any(target_key == key for target_key in lora_config.target_modules)
        is_using_layer_indexes = getattr(lora_config, "layers_to_transform", None) is not None
        layer_indexing_pattern = getattr(lora_config, "layers_pattern", None)

        if is_using_layer_indexes and target_module_found:
            layers_pattern = COMMON_LAYERS_PATTERN if layer_indexing_pattern is None else layer_indexing_pattern
            layers_pattern = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern

            for pattern in layers_pattern:
                layer_index = re.match(f".*.{pattern}\.(\d+)\.*", key)
                if layer_index is not None:
                    layer_index = int(layer_index.group(1))
                    if isinstance(lora_config.layers_to_transform, int):
                        target_module_found = layer_index == lora_config.layers_to_transform
                    else:
                        target_module_found = layer_index in lora_config.layers_to_transform

                    break
                else:
                    target_module_found = False
    return target_module_found
