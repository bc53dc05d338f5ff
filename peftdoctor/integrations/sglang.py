"""SGLang plugin: every LoRA adapter SGLang loads is checked for the running SGLang release first, served
from an exact fixed copy when a rewrite exists, and refused with one line naming the finding otherwise.

SGLang (0.5.11 on) runs each function of the entry-point group `sglang.srt.plugins` in every process it
starts, the scheduler included, then patches what they registered (sglang/srt/plugins/__init__.py
load_plugins -> HookRegistry.apply_hooks; called in sglang/srt/managers/scheduler.py run_scheduler_process).
`register` is that function: ONE BEFORE hook on LoRAConfig.__init__, because both ways in reach it with the
adapter's path, inside the loader's `try`:
  --lora-paths at start:   LoRAManager.init_lora_adapters -> (_)load_lora_adapter -> LoRAConfig(lora_ref.lora_path, ...)
  /load_lora_adapter:      Scheduler -> TpModelWorker -> ModelRunner -> LoRAManager.load_lora_adapter -> the same
The loader wraps that call in `except Exception as e: create_lora_update_result(success=False,
error_message=str(e))` (sglang/srt/lora/lora_manager.py, 0.5.11 to 0.5.23): a refusal raised here becomes the
failed-load answer (HTTP 400) at runtime and "Failed to load LoRA adapter NAME: ..." at start-up, and never
takes the scheduler down. A new path reaches the weights too: LoRAAdapter.initialize_weights reads
self.config.path (sglang/srt/lora/lora.py). Nothing here imports sglang until SGLang calls `register`.
"""
from __future__ import annotations

import logging
import os
import sys
from importlib import metadata
from typing import Any, Optional

TARGET = "sglang.srt.lora.lora_config.LoRAConfig.__init__"
FIRST_RELEASE = "0.5.11"  # the first release whose wheel has sglang/srt/plugins/hook_registry.py (0.5.10.post1 has none)
# Where releases publish the server arguments in a process, as (module, function); read only when SGLang
# has imported the module already, never imported from here. The first that answers wins.
SERVER_ARGS = (
    ("sglang.srt.runtime_context", "get_lora"),  # the resolved LoRA settings: in 0.5.18, 0.5.20, 0.5.23
    ("sglang.srt.runtime_context", "get_server_args"),  # 0.5.15 to 0.5.23
    ("sglang.srt.server_args", "get_global_server_args"),  # 0.5.11 to 0.5.18; 0.5.20 retires it (RuntimeError)
)

logger = logging.getLogger(__name__)


class AdapterRefused(ValueError):
    """SGLang would not serve this adapter as peft computes it and no rewrite helps; str() is one line.
    A ValueError, as SGLang's own refusals in LoRAManager.validate_new_adapter are."""


def register() -> None:
    """The `sglang.srt.plugins` entry point: SGLang calls it inside load_plugins()."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, check_before_load, HookType.BEFORE)


def check_before_load(*args: Any, **kwargs: Any) -> Optional[tuple[tuple[Any, ...], dict[str, Any]]]:
    """BEFORE hook on LoRAConfig.__init__(self, path=None, config_dict=None, ...): None keeps the call as it
    is, (args, kwargs) sends SGLang to the fixed copy; raises AdapterRefused to refuse."""
    positional = len(args) > 1
    source = args[1] if positional else kwargs.get("path")
    if source is None:  # LoRAConfig.from_dict: tensors sent over the API, no files to check
        return None
    from peftdoctor.serving.prepare import prepare

    prepared = prepare(local_copy(str(source)), running_target(), name=str(source),
                       max_lora_rank=server_max_lora_rank())  # never raises: a refusal is an answer
    if prepared.path is None:
        logger.error("%s", prepared.line)
        raise AdapterRefused(prepared.line)
    logger.info("%s", prepared.line)
    if not prepared.rewritten:
        return None
    new = str(prepared.path)
    return ((args[0], new, *args[2:]), kwargs) if positional else (args, {**kwargs, "path": new})


def local_copy(source: str) -> str:
    """A directory for `source`. SGLang fetches a path that is no directory from the Hub itself
    (LoRAConfig.get_lora_config: snapshot_download); fetching it here first, into the same Hugging Face
    cache, lets peftdoctor read it instead of refusing what SGLang would have served. A failed download
    raises inside SGLang's `try`, as SGLang's own would."""
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download

    return snapshot_download(source)


def running_target() -> str:
    """`sglang==<the installed release>`, from its distribution metadata (importing sglang would run its
    whole front end), else the imported module's __version__ (a source checkout); plain `sglang` (the
    newest release checked) when neither says."""
    try:
        version = metadata.version("sglang")
    except metadata.PackageNotFoundError:
        version = getattr(sys.modules.get("sglang"), "__version__", None)
    return f"sglang=={version}" if version else "sglang"


def server_max_lora_rank() -> Optional[int]:
    """--max-lora-rank as this process's server arguments give it, or None (not set, not published yet):
    without it SGLang sizes its pool from the adapters given at start-up, which peftdoctor cannot know."""
    for module_name, function in SERVER_ARGS:
        module = sys.modules.get(module_name)
        try:
            rank = getattr(getattr(module, function)(), "max_lora_rank", None)
        except Exception:  # not published in this process yet, or the accessor is retired in this release
            continue
        if isinstance(rank, int) and not isinstance(rank, bool):
            return rank
    return None
