"""vLLM 0.34.0's own API-server path, end to end without a GPU: `load_general_plugins` (the real entry
points; VLLM_PLUGINS picks which), then `OpenAIServingModels.resolve_lora` -- what vLLM runs for a request
naming an unknown model when VLLM_ALLOW_RUNTIME_LORA_UPDATING is set -- with an engine client whose
`add_lora` does what vLLM's worker does first (vllm/lora/worker_manager.py `_load_adapter`:
`PEFTHelper.from_local_dir` then `validate_legal(lora_config)`), vLLM's own code; the GPU part after it (the
weights loaded onto the model) is what this machine cannot run. Prints JSON: per name, vLLM's answer and
the plugin's log lines.

argv[1]: {"base": NAME, "names": [...], "max_lora_rank": N}
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from types import SimpleNamespace

import vllm.logger  # noqa: F401 - first: its logging config empties the handlers of vllm.* loggers
import vllm.plugins
from vllm.config.lora import LoRAConfig
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.lora.peft_helper import PEFTHelper
from vllm.lora.request import LoRARequest

job = json.loads(sys.argv[1])
lines: list[list[str]] = []


class Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines.append([record.levelname, record.getMessage()])


logging.getLogger("vllm.peftdoctor").addHandler(Keep(logging.DEBUG))
vllm.plugins.load_general_plugins()


class EngineClient:
    """The engine's side of add_lora up to the GPU: vLLM's own PEFTHelper checks against the LoRAConfig."""

    def __init__(self) -> None:
        self.model_config = SimpleNamespace(model=job["base"], max_model_len=64)
        self.renderer = self.input_processor = None
        self.lora_config = LoRAConfig(max_lora_rank=job["max_lora_rank"])
        self.loaded: list[str] = []

    async def add_lora(self, request: LoRARequest) -> bool:
        PEFTHelper.from_local_dir(request.lora_path, 64).validate_legal(self.lora_config)
        self.loaded.append(request.lora_path)
        return True


async def main() -> dict:
    engine = EngineClient()
    models = OpenAIServingModels(engine, [BaseModelPath(name=job["base"], model_path=job["base"])])
    answers = {}
    for name in job["names"]:
        del lines[:]
        got = await models.resolve_lora(name)
        answer = ({"lora_path": got.lora_path, "lora_int_id": got.lora_int_id} if isinstance(got, LoRARequest)
                  else {"code": got.error.code, "message": got.error.message})
        answers[name] = {**answer, "log": lines[:]}
    return {"resolvers": [type(r).__name__ for r in models.lora_resolvers], "answers": answers,
            "loaded": engine.loaded}


print(json.dumps(asyncio.run(main())))
