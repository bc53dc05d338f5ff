"""A base too large for memory but not for the devices present: accelerate's big-model loading.

transformers' from_pretrained(device_map="auto", max_memory=..., offload_folder=...) places each module
on a GPU, in CPU memory or on "disk"; accelerate's hooks bring a placed module's weights to the
execution device at each forward and drop them after. transformers reads disk-offloaded weights of a
safetensors base in place (its offload index points at the base's own shards); it writes into the
offload folder only weights it must convert (a pickle base, a re-packed MoE).

peft 0.21 cannot take an adapter onto such a model by itself, for three reasons this module works around:

- `PeftModel.from_pretrained` (load_adapter) re-dispatches a model whose `hf_device_map` holds "cpu" or
  "disk", with a device map it infers again from its own keyword arguments (the machine's memory when
  none are given), not the map the base was loaded with. When the model then fits one device,
  accelerate's dispatch_model calls `model.to(device)` on parameters that are still on the meta device:
  "Cannot copy out of meta tensor". Before that, it rebuilds an offload index from the hooks, and its
  `_update_offload` writes a copy of each offloaded shard (keys renamed) under a name derived from the
  shard's: "-peft" appended to a hub-cache "models--" folder, else the absolute path with its leading "/"
  dropped, i.e. relative to the working directory (and with the working directory "/", over the base's
  own shard). Hiding `hf_device_map` skips all of it.
- each adapter layer is moved to the device of its base layer's weight, which for an offloaded layer is
  "meta": the adapter's weights are dropped, and loading them into meta is a no-op (torch warns).
- `merge_and_unload` is exact (peft's onload_layer brings each offloaded base layer in, merges, and puts
  it back), but it puts every merged layer back as CPU tensors: the hook's weights map is replaced by a
  dict of them, and the branch meant to write them to disk tests that dict for `.dataset`, so never runs.
  The merged model then holds every targeted weight in CPU memory, which is what does not fit.

So the adapter is attached with the base's `hf_device_map` hidden (no re-dispatch), each adapter module
left on meta is materialised on its base layer's execution device, and the adapter's weights are loaded
with peft's own set_peft_model_state_dict. The merge is the streaming merge (memory: about one shard),
whose output is loaded the same way to be probed. DoRA is not taken this way: its forward reads the base
weight outside the base layer's own forward, where accelerate's hook has not brought it in. The path
that uses this (its steps and findings) is offloaded.py. torch, transformers, peft and accelerate are
imported inside the functions.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional


def gpu_free(device: str) -> dict[int, int]:
    """Free bytes of each CUDA device verify may use: none for --device cpu, one for cuda:N."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return {}
    indices = [int(device.split(":")[1])] if ":" in device else list(range(torch.cuda.device_count()))
    return {i: int(torch.cuda.mem_get_info(i)[0]) for i in indices}


@contextmanager
def work_folder(folder: Optional[Path]) -> Iterator[Path]:
    """A private folder for this run inside --offload-folder (or the system's temporary directory without
    one), removed with all it holds when the run ends; --offload-folder itself is left as it was found
    (removed again when this run created it)."""
    created = folder is not None and not folder.exists()
    if created:
        folder.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="peftdoctor-offload-", dir=str(folder) if folder is not None else None))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created:
            try:
                folder.rmdir()
            except OSError:
                pass  # something else wrote there meanwhile: not ours to remove


def placement(max_memory: dict[Any, int], offload_folder: Optional[Path]) -> dict[str, Any]:
    """from_pretrained's big-model arguments."""
    found: dict[str, Any] = {"device_map": "auto", "max_memory": dict(max_memory)}
    if offload_folder is not None:
        found["offload_folder"] = str(offload_folder)
    return found


def describe(device_map: dict[str, Any], offload_folder: Optional[Path]) -> str:
    """Where accelerate put the modules: "3 modules on cpu, 2 offloaded to disk (DIR)"."""
    counts = Counter("disk" if d == "disk" else "cpu" if d == "cpu" else f"cuda:{d}" if isinstance(d, int) else str(d)
                     for d in device_map.values())
    parts = [f"{n} module(s) on {d}" for d, n in sorted(counts.items()) if d != "disk"]
    if counts.get("disk"):
        written = sum(1 for p in offload_folder.rglob("*") if p.is_file()) if offload_folder is not None else 0
        where = (f"{written} weight file(s) written to {offload_folder}" if written
                 else "read in place from the base's safetensors shards")
        parts.append(f"{counts['disk']} offloaded to disk ({where})")
    return ", ".join(parts)


def disk_modules(device_map: dict[str, Any]) -> list[str]:
    return [name for name, d in device_map.items() if d == "disk"]


def main_device(device_map: dict[str, Any]) -> str:
    """Where accelerate runs the offloaded modules: the first GPU placed, else the CPU (as dispatch_model picks)."""
    gpus = sorted(d for d in device_map.values() if isinstance(d, int))
    return f"cuda:{gpus[0]}" if gpus else "cpu"


def attach_adapter(model: Any, adapter_dir: str, adapter_name: str = "default") -> Any:
    """PeftModel.from_pretrained on a dispatched base, with the adapter's weights actually loaded (see above)."""
    from peft import PeftModel
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    device_map = model.__dict__.pop("hf_device_map", None)  # hidden: peft would re-dispatch the model
    try:
        with warnings.catch_warnings():  # torch's "copying ... to a meta parameter ... is a no-op": handled below
            warnings.filterwarnings("ignore", message=".*to a meta parameter in the current model.*")
            peft_model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name, is_trainable=False)
    finally:
        if device_map is not None:
            model.hf_device_map = device_map
    fallback = main_device(device_map or {})
    for owner, layer in _adapter_modules_on_meta(peft_model, adapter_name):
        _materialise(peft_model, owner, layer, fallback)
    result = set_peft_model_state_dict(peft_model, load_peft_weights(adapter_dir, device="cpu"),
                                       adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k or k.endswith(f".{adapter_name}")]
    left = [n for n, p in peft_model.named_parameters() if p.device.type == "meta" and f".{adapter_name}." in n]
    if missing or left:
        raise RuntimeError(f"the adapter's weights did not load onto the dispatched base: {(missing or left)[0]}")
    peft_model.eval()
    return peft_model


def _adapter_modules_on_meta(peft_model: Any, adapter_name: str) -> list[tuple[str, str]]:
    """(module, layer) for each of the adapter's own modules that holds a tensor on the meta device:
    ("...q_proj.lora_A.default", "...q_proj"), ("...lm_head.modules_to_save.default", "...lm_head"), or for a
    ParameterDict entry ("...embed_tokens.lora_embedding_A.default") the ParameterDict itself."""
    found: list[tuple[str, str]] = []
    for name, tensor in [*peft_model.named_parameters(), *peft_model.named_buffers()]:
        parts = name.split(".")
        if tensor.device.type != "meta" or adapter_name not in parts:
            continue
        at = max(i for i, part in enumerate(parts) if part == adapter_name)
        owner = parts[:at + 1] if at < len(parts) - 1 else parts[:at]  # a module, or the ParameterDict
        entry = (".".join(owner), ".".join(parts[:at - 1]))
        if entry not in found:
            found.append(entry)
    return found


def _materialise(peft_model: Any, owner: str, layer_name: str, fallback: str) -> None:
    """Give the adapter module `owner` real (uninitialised) storage on the device its layer runs on; a copy
    of a base module (modules_to_save) loses the offload hook it was copied with, which would bring the
    base's weights back over the adapter's at every forward."""
    from accelerate.hooks import remove_hook_from_submodules

    module = peft_model.get_submodule(owner)
    layer = peft_model.get_submodule(layer_name)  # the tuner layer, or the modules_to_save wrapper
    original = getattr(layer, "original_module", None)
    base_layer = original if original is not None else \
        layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    remove_hook_from_submodules(module)
    module.to_empty(device=_execution_device(base_layer) or fallback, recurse=True)


def _execution_device(module: Any) -> Optional[Any]:
    hook = getattr(module, "_hf_hook", None)
    for one in getattr(hook, "hooks", [hook] if hook is not None else []):
        if getattr(one, "execution_device", None) is not None:
            return one.execution_device
    for tensor in module.parameters():
        if tensor.device.type != "meta":
            return tensor.device
    return None
