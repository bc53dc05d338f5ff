"""Run inside a vLLM release's side-by-side env (scripts/engine_envs.py): load plugins with vLLM's own
`load_general_plugins`, take our resolver from vLLM's own registry, resolve names, print JSON.

argv[1]: a JSON job: {"init": "real" | "skip", "argv": [...], "base": NAME, "names": [...],
"release": VERSION or null (construct the resolver for that release instead of vllm.__version__),
"fault": TEXT or absent (serving.prepare raises RuntimeError(TEXT))}.
"init": "skip" (vLLM 0.8.x) makes the `vllm` package from its real directory and real version.py without
running vllm/__init__.py, and runs the body of vLLM's `load_general_plugins` after its platform preamble:
`load_plugins_by_group("vllm.general_plugins")` (the real discovery and VLLM_PLUGINS filter) and a call of
each function found. Both skipped parts import the whole engine (pydantic, vllm.platforms, a stand-in
`triton` that breaks transformers 5), which this CPU machine cannot; every module used is vLLM's own file.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path

job = json.loads(sys.argv[1])
if job["init"] == "skip":
    where = Path(importlib.util.find_spec("vllm").origin).parent
    spec = importlib.util.spec_from_file_location("vllm", where / "__init__.py",
                                                  submodule_search_locations=[str(where)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["vllm"] = package
    import vllm.version

    package.__version__ = vllm.version.__version__

import vllm  # noqa: E402
import vllm.logger  # noqa: E402,F401 - first: its logging config empties the handlers of vllm.* loggers
import vllm.plugins  # noqa: E402

lines: list[list[str]] = []


class Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines.append([record.levelname, record.getMessage()])


logging.getLogger("vllm.peftdoctor").addHandler(Keep(logging.DEBUG))
logging.getLogger("vllm.peftdoctor").setLevel(logging.DEBUG)
sys.argv = ["vllm", *job.get("argv", [])]
if job["init"] == "skip":
    for register in vllm.plugins.load_plugins_by_group("vllm.general_plugins").values():
        register()  # as load_general_plugins does with what it found
else:
    vllm.plugins.load_general_plugins()
out: dict = {"version": vllm.__version__, "register_log": lines[:], "resolvers": None, "results": {}}
try:
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry
except ImportError as exc:
    out["no_resolver_api"] = str(exc)
    print(json.dumps(out))
    sys.exit(0)

out["resolvers"] = sorted(LoRAResolverRegistry.get_supported_resolvers())
if "peftdoctor" in out["resolvers"]:
    resolver = LoRAResolverRegistry.get_resolver("peftdoctor")
    if job.get("release"):
        from dataclasses import replace

        resolver = type(resolver)(replace(resolver.settings, release=job["release"]))
    out["is_lora_resolver"] = isinstance(resolver, LoRAResolver)
    if job.get("fault"):  # a bug of peftdoctor's, injected: prepare raises what it never should
        import peftdoctor.serving.prepare

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError(job["fault"])

        peftdoctor.serving.prepare.prepare = broken
    for name in job["names"]:
        del lines[:]
        request = asyncio.run(resolver.resolve_lora(job["base"], name))
        out["results"][name] = {
            "request": None if request is None else
            {"type": f"{type(request).__module__}.{type(request).__name__}", "lora_name": request.lora_name,
             "lora_int_id": request.lora_int_id, "lora_path": request.lora_path},
            "log": lines[:],
        }
print(json.dumps(out))
