"""Other tools' adapter formats, named instead of misdiagnosed as broken PEFT adapters (data, not branches).

Each entry says how the directory is recognised (files it holds; keys its adapter_config.json has while
it has no peft_type) and what to do next. The layouts are those the tools write:
- mlx-lm (`mlx_lm.lora`): adapter_config.json holds the training arguments (`lora_parameters`,
  `fine_tune_type`, `num_layers` or the older `lora_layers`), weights in `adapters.safetensors`;
- AdapterHub / adapter-transformers (`model.save_adapter`): adapter_config.json wraps the adapter's
  `config` with `model_class`, `model_name` and `name`; weights in `pytorch_adapter.bin`;
- a transformers model config.json saved under the adapter's file name (`model_type`, `architectures`,
  `_name_or_path`, and no peft_type);
- diffusers (`save_lora_weights`): `pytorch_lora_weights.safetensors`;
- kohya-ss sd-scripts: a lone `*.safetensors` whose header metadata carries `ss_*` training keys.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OtherFormat:
    kind: str
    what: str  # how the finding names it
    files: tuple[str, ...] = ()  # any of these present (and no PEFT adapter config) identifies it
    config_keys: tuple[str, ...] = ()  # any of these in an adapter_config.json without peft_type identifies it
    next_step: str = ""


OTHER_FORMATS: tuple[OtherFormat, ...] = (
    OtherFormat("mlx-lm", "an mlx-lm LoRA adapter (adapter_config.json holds mlx_lm.lora's training arguments)",
                files=("adapters.safetensors",), config_keys=("lora_parameters", "fine_tune_type", "lora_layers"),
                next_step="fuse it into its base with `mlx_lm.fuse --model BASE --adapter-path DIR --save-path OUT` "
                          "(add --de-quantize for a quantized base) and deploy the fused model; peft cannot load it"),
    OtherFormat("adapterhub", "an AdapterHub / adapter-transformers adapter",
                files=("pytorch_adapter.bin", "head_config.json"), config_keys=("model_class", "model_name"),
                next_step="load it with the `adapters` library (model.load_adapter(DIR)), not with peft"),
    OtherFormat("model-config", "a transformers model config.json saved under the name adapter_config.json",
                config_keys=("model_type", "architectures", "_name_or_path"),
                next_step="save the adapter with PeftModel.save_pretrained(), which writes the real "
                          "adapter_config.json (peft_type, r, target_modules, ...)"),
    OtherFormat("diffusers-lora", "a diffusers LoRA (pytorch_lora_weights.safetensors)",
                files=("pytorch_lora_weights.safetensors",),
                next_step="load it into its pipeline with diffusers: pipe.load_lora_weights(DIR)"),
    OtherFormat("kohya-lora", "a kohya-ss (sd-scripts) LoRA for Stable Diffusion",
                next_step="load it with diffusers' pipe.load_lora_weights(FILE) or the tool that trained it; "
                          "it is not a PEFT adapter"),
)
FORMAT_BY_KIND = {f.kind: f for f in OTHER_FORMATS}
