"""Stand in for SGLang's LoRA memory pool: run the release's own LoRAMemoryPool.can_support on adapters.

Run by tests/test_max_lora_rank.py with PYTHONPATH = an sglang release's --target directory. mem_pool.py
imports SGLang's distributed and layer code (torch kernels), so the module is not imported: the method's
source is taken from the release's mem_pool.py as written (ast) and run on a pool that holds only what it
reads (max_lora_rank, lora_added_tokens_size, target_modules), with SGLang's real LoRAConfig reading each
adapter directory. The top-level `sglang` package is an empty package over the release's sglang/ directory
(tests/sglang_package.py says why). get_normalized_target_modules (sglang/srt/lora/utils.py, which imports
the model executor) is the identity here: every adapter targets modules the pool holds.

argv: a JSON object {"limits": [...], "adapters": {"rank": directory, ...}}; prints {"rank,limit": bool}.
"""
from __future__ import annotations

import ast
import json
import sys
import types
from collections.abc import Iterable
from typing import Union

import sglang_package  # first: sglang/__init__.py must not run

from sglang.srt.lora.lora_config import LoRAConfig  # noqa: E402

source = open(f"{sglang_package.package.__path__[0]}/srt/lora/mem_pool.py", encoding="utf-8").read()
pool_class = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LoRAMemoryPool")
method = next(n for n in pool_class.body if isinstance(n, ast.FunctionDef) and n.name == "can_support")
namespace = {"LoRAConfig": LoRAConfig, "Union": Union, "Iterable": Iterable,
             "get_normalized_target_modules": lambda modules: set(modules)}
exec(compile(ast.Module([method], []), "mem_pool.py", "exec"), namespace)
can_support = namespace["can_support"]

task = json.loads(sys.argv[1])
out = {}
for rank, directory in task["adapters"].items():
    config = LoRAConfig(directory, base_vocab_size=100)
    for limit in task["limits"]:
        pool = types.SimpleNamespace(max_lora_rank=limit, lora_added_tokens_size=0,
                                     target_modules=set(config.target_modules))
        out[f"{rank},{limit}"] = can_support(pool, config)
print(json.dumps(out))
