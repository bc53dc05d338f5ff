"""Stand in for an SGLang process: run SGLang's real plugin loader from a released wheel, then load
adapters through SGLang's real LoRAConfig as its LoRA manager does, and print what happened as JSON.

Run by tests/test_sglang_plugin.py with PYTHONPATH = a site dir holding peftdoctor's entry point, then the
sglang release's --target directory. One substitution: the top-level `sglang` package is made an empty
package over the release's sglang/ directory, so sglang/__init__.py (the front-end language API, which
imports triton, PIL and orjson) does not run; sglang.srt.plugins, sglang.srt.environ and
sglang.srt.lora.lora_config are the release's own files, unchanged.

argv: a JSON object {"name": adapter directory, ...}; each is loaded twice.
"""
from __future__ import annotations

import json
import os
import sys
import time

import sglang_package  # noqa: F401 - first: sglang/__init__.py must not run

from sglang.srt.lora.lora_config import LoRAConfig  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402
from sglang.srt.plugins.hook_registry import HookRegistry  # noqa: E402

# kept in a dict: apply_hooks rebinds every module global that `is` the original (_propagate_patch), ours too
before = {"init": LoRAConfig.__init__}
load_plugins()
hooks = [(kind.name, f"{hook.__module__}.{hook.__qualname__}", source.plugin_name if source else None)
         for target, entries in HookRegistry._hooks.items() for kind, hook, source in entries]
out = {"sglang_file": sys.modules["sglang.srt.plugins"].__file__, "hooks": hooks,
       "patched": sorted(HookRegistry._patched),
       "wraps_original": getattr(LoRAConfig.__init__, "__wrapped__", None) is before["init"], "loads": {}}
for name, path in json.loads(sys.argv[1]).items():
    tries = []
    for _ in range(2):
        started = time.perf_counter()
        try:
            config = LoRAConfig(path, base_vocab_size=100)  # as LoRAManager.load_lora_adapter calls it
            seen = {"path": config.path, "r": config.r, "lora_alpha": config.lora_alpha,
                    "inode": os.stat(os.path.join(config.path, "adapter_config.json")).st_ino}
        except Exception as exc:  # what SGLang's loader catches and turns into success=False, error_message=str(e)
            seen = {"error": type(exc).__name__, "bases": [c.__name__ for c in type(exc).__mro__], "text": str(exc)}
        tries.append(dict(seen, seconds=time.perf_counter() - started))
    out["loads"][name] = tries
print(json.dumps(out))
