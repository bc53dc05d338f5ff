"""The accelerate path: a base too large for memory, not for the devices present (GPUs, CPU, --offload-folder).

The base is loaded with accelerate's big-model loading (device_map="auto", max_memory from the measured
budget, the offload folder in a private subfolder), the adapter attached to it and probed: the reference.
The merge is streamed into --out (or a temporary folder) and loaded the same way to be probed against
it. The accelerate and peft glue this needs is offload.py. torch, transformers and peft are imported
inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.merge import plan as P
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.verification import base as basemod
from peftdoctor.verification import large
from peftdoctor.verification import merged as merged_judge
from peftdoctor.verification import offload as accelerated
from peftdoctor.verification.probe import forward
from peftdoctor.verification.steps import (
    Run,
    Skip,
    free,
    judge_merged_output,
    load_failure_findings,
    note_untrained_head,
    probe_adapted,
    streamed_merge,
)


def check_offload_folder(folder: Optional[str]) -> Optional[Path]:
    """An --offload-folder that is a directory, or can be made one (its parent exists)."""
    if folder is None:
        return None
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UnusableInput(f"--offload-folder {folder}: exists and is not a directory")
    if not path.exists() and not path.parent.is_dir():
        raise UnusableInput(f"--offload-folder {folder}: parent directory {path.parent} does not exist")
    return path


def accelerate_budget(run: Run, facts: Adapter, base: Base, dtype: str, device: str,
                      offload: Optional[Path]) -> Optional[dict[Any, int]]:
    """accelerate's max_memory when this too-large base can be loaded across the devices present (GPUs,
    CPU, --offload-folder) and the adapter probed on it, else None (layer by layer, noted when asked for)."""
    budget = large.max_memory(large.dtype_bytes(base, dtype), accelerated.gpu_free(device), offload is not None)
    if budget is None:
        return None
    why = None if facts.config is None else P.refusal(facts.config)
    if why is None and facts.config is not None and facts.config.get("use_dora"):
        why = "DoRA's forward reads the base weight outside the layer accelerate's hook brings it into"
    if why is not None:
        if offload is not None:
            run.notes.append(f"--offload-folder not used ({why.rstrip('.')}): verified layer by layer instead")
        return None
    return budget


def verify_offloaded(run: Run, facts: Adapter, base: Base, out: Optional[Path], dtype: str, tol: float, reason: str,
                     budget: dict[Any, int], offload: Optional[Path], trust_remote_code: bool,
                     state: dict[str, Any]) -> None:
    """Too large for memory, not for the devices present: accelerate's big-model loading (device_map="auto",
    max_memory, offload folder) for base + adapter, whose probe is the reference; the merge is streamed
    into --out (or a temporary folder) and loaded the same way to be probed against it."""
    limits = ", ".join(f"{'cpu' if d == 'cpu' else f'cuda:{d}'} {large.size_text(n)}" for d, n in budget.items())
    run.step("memory", "measuring the memory available", lambda: (None, (
        f"{reason}: loaded with accelerate (device_map=auto, max_memory {limits}"
        + (f", offload folder {offload}" if offload is not None else "") + ")")))
    with accelerated.work_folder(offload) as scratch:
        placement = accelerated.placement(budget, scratch / "offload" if offload is not None else None)
        inputs, reference = _dispatched_reference(run, facts, base, dtype, tol, placement, trust_remote_code,
                                                  scratch, state)
        free(state["device"])
        target = out if out is not None else scratch / "merged"
        run.step("merge (streaming)", "streaming the merge shard by shard",
                 lambda: streamed_merge(facts, base, target, dtype, allow_noop=True,
                                        trust_remote_code=trust_remote_code))
        if out is not None:
            state["out"] = str(out)
        else:
            run.notes.append("no --out given: the merged model was streamed to a temporary directory"
                             + (f" in {offload}" if offload is not None else "") + ", probed and deleted; "
                             "pass --out DIR to keep it")
        state["merge_base"] = f"{base.display} weights in {dtype}"
        output = run.step("probe merged", "loading the merged model with accelerate and running the probe batch",
                          lambda: _probe_dispatched(target, facts, dtype, placement, trust_remote_code, inputs))
    judge_merged_output(run, "merged vs adapted", output, reference, tol,
                        "deploy with PeftModel instead, or merge again with `peftdoctor merge`")


def _dispatched_reference(run: Run, facts: Adapter, base: Base, dtype: str, tol: float, placement: dict[str, Any],
                          trust_remote_code: bool, scratch: Path, state: dict[str, Any]) -> tuple[Any, Any]:
    """Load the base dispatched by accelerate, attach the adapter, probe: the reference the merge must match.
    Returns (inputs, reference logits); the models are released on return."""
    loaded = run.step("load base", f"loading base {base.display} with accelerate ({dtype}, device_map=auto)",
                      lambda: _load_dispatched(base, facts, dtype, placement, trust_remote_code, scratch))
    state["device"] = device = accelerated.main_device(loaded.model.hf_device_map)
    note_untrained_head(run, loaded.missing, facts)
    peft_model = run.step("load adapter", "loading the adapter with PeftModel.from_pretrained onto the "
                          "dispatched base", lambda: _attach(run, loaded.model, facts))
    return run.step("probe adapted", "running the probe batch through base + adapter",
                    lambda: probe_adapted(run, peft_model, facts, device, tol))


def _load_dispatched(base: Base, facts: Adapter, dtype: str, placement: dict[str, Any], trust_remote_code: bool,
                     scratch: Path) -> tuple[basemod.LoadedBase, str]:
    loaded = basemod.load_base(base, facts, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code,
                               quantized=False, placement=placement)
    device_map = getattr(loaded.model, "hf_device_map", None) or {"": "cpu"}
    loaded.model.hf_device_map = device_map
    folder = Path(placement["offload_folder"]) if "offload_folder" in placement else None
    return loaded, (f"{type(loaded.model).__name__}, {dtype}; loaded with accelerate device_map=auto: "
                    f"{accelerated.describe(device_map, folder)}")


def _attach(run: Run, model: Any, facts: Adapter) -> tuple[Any, str]:
    rows = basemod.resized_rows(model, facts)
    if rows is not None:
        raise Skip(f"the adapter was saved for {rows[1]} vocabulary rows, the base has {rows[0]}: a model "
                   "dispatched by accelerate cannot be resized; run without --offload-folder (layer by layer)")
    try:
        peft_model = accelerated.attach_adapter(model, str(facts.directory))
    except Exception as exc:
        run.findings.extend(load_failure_findings(facts, exc))
        raise
    return peft_model, (f"{type(peft_model).__name__}; adapter weights loaded onto each layer's execution device "
                        "(peft alone re-dispatches an offloaded base and leaves them on meta)")


def _probe_dispatched(directory: Path, facts: Adapter, dtype: str, placement: dict[str, Any],
                      trust_remote_code: bool, inputs: dict[str, Any]) -> tuple[Any, str]:
    loaded = basemod.load_base(merged_judge.merged_base(directory), facts, dtype=dtype, device="cpu",
                               trust_remote_code=trust_remote_code, quantized=False, placement=placement)
    device_map = getattr(loaded.model, "hf_device_map", None) or {"": "cpu"}
    folder = Path(placement["offload_folder"]) if "offload_folder" in placement else None
    output = forward(loaded.model, inputs)
    del loaded
    return output, f"reloaded with transformers, device_map=auto: {accelerated.describe(device_map, folder)}"
