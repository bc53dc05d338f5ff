"""`verify`: load base + adapter with the installed peft, probe, merge, probe, save, reload, probe.

Each step is timed and recorded (steps.py). A step that cannot run here (no GPU, base not cached,
bitsandbytes unusable) is skipped with its reason and ends the run as "not-verified"; a step that
fails ends it as "failed"; only unusable input raises (UnusableInput, one line).

This module checks the arguments and picks the path: --load-only attaches the adapter to a base built
on the meta device and reports what peft applied (load_only.py); a base that fits in memory is loaded whole
(whole.py); one too large for memory but not for the devices present is loaded with accelerate
(offloaded.py); else, and for --merged, the merge is judged one module at a time (layered.py).
"""
from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import UnusableInput, import_holding_interrupts
from peftdoctor.io.staging import check_out
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Severity
from peftdoctor.peft import releases
from peftdoctor.verification import facts as adapter_facts
from peftdoctor.verification import large
from peftdoctor.verification.facts import read_adapter
from peftdoctor.verification.layered import verify_layer_by_layer, verify_merged
from peftdoctor.verification.load_only import verify_load_only
from peftdoctor.verification.offloaded import accelerate_budget, check_offload_folder, verify_offloaded
from peftdoctor.verification.probe import DEFAULT_TOLERANCE
from peftdoctor.verification.result import LoadOnlyResult, Verdict, VerifyReport
from peftdoctor.verification.steps import Progress, Run, Skip, Stop, note_pickled_adapter, one_line, resolve_base
from peftdoctor.verification.whole import verify_in_memory

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# The 4-bit forward dequantizes block-wise on the fly; against a merge into the dequantized
# weights it differs by the rounding of those blocks, so its floor is the float16 tolerance.
QUANTIZED_TOLERANCE_FLOOR = DEFAULT_TOLERANCE["float16"]


def verify(adapter: str, base: Optional[str] = None, device: str = "auto", dtype: str = "auto",
           out: Optional[str] = None, tolerance: Optional[float] = None, trust_remote_code: bool = False,
           progress: Optional[Progress] = None, merge_dtype: Optional[str] = "float32",
           merged: Optional[str] = None, offload_folder: Optional[str] = None,
           load_only: bool = False) -> VerifyReport:
    """Verify that `adapter` loads, computes the same merged as unmerged, and saves deployable.

    merge_dtype: the precision the merge is done in before casting to `dtype` (None: in `dtype`).
    merged: instead, judge this merged model (made by any tool) against base + adapter, tensor by tensor.
    offload_folder: a base too large for memory is loaded with accelerate (device_map="auto"), what does
    not fit the GPUs and the CPU offloaded to disk here (in a subfolder removed at the end).
    load_only: only attach the adapter with peft to the base built on the meta device (no weights read) and
    report which saved tensors and adapted modules peft applied (VerifyReport.load; the verdict is its verdict).
    """
    if dtype not in DTYPES or (merge_dtype is not None and merge_dtype not in DTYPES[1:]):
        raise UnusableInput(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if not _DEVICE.match(device):
        raise UnusableInput(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if tolerance is not None and not tolerance > 0:
        raise UnusableInput(f"--tolerance {tolerance}: must be a positive number")
    if merged is not None and (out is not None or tolerance is not None):
        raise UnusableInput("--merged judges a merge that exists: --out and --tolerance do not apply (its "
                            "bounds come from the dtypes' rounding)")
    if merged is not None and offload_folder is not None:
        raise UnusableInput("--merged judges a merge that exists tensor by tensor: --offload-folder does not apply")
    if load_only and (merged, out, offload_folder, tolerance) != (None, None, None, None):
        raise UnusableInput("--load-only only attaches the adapter to the base built on the meta device: --merged, "
                            "--out, --offload-folder and --tolerance do not apply")
    offload = check_offload_folder(offload_folder)
    facts = read_adapter(adapter)
    out_path = check_out(out) if out is not None else None
    import_holding_interrupts("torch")  # the first import of torch (see there): Ctrl-C during it is not lost
    run = Run(progress)
    state: dict[str, Any] = {"device": device, "dtype": dtype, "base": None, "merge_base": None, "out": None,
                             "load": None}
    try:
        if load_only:
            verify_load_only(run, facts, base, trust_remote_code, state)
        elif merged is not None:
            verify_merged(run, facts, base, merged, state, trust_remote_code)
        else:
            _verify(run, facts, base, out_path, tolerance, trust_remote_code, merge_dtype, state, offload)
    except Stop:
        pass
    finally:
        gc.collect()
    return VerifyReport(
        adapter=facts.display, base=state["base"], peft_type=facts.peft_type, task_type=facts.task_type,
        device=state["device"], dtype=state["dtype"], peft_installed=releases.installed_peft(),
        mergeable=adapter_facts.mergeable(facts), verdict=_verdict(run, state["load"]), steps=tuple(run.steps),
        parity=tuple(run.parity), findings=tuple(run.findings), merge_base=state["merge_base"],
        out=state["out"], notes=tuple(run.notes), load=state["load"])


def _verdict(run: Run, load: Optional[LoadOnlyResult]) -> Verdict:
    if load is not None:
        return load.verdict
    if any(s.status == "failed" for s in run.steps) or any(p.passed is False for p in run.parity) \
            or any(f.severity is Severity.ERROR for f in run.findings):
        return "failed"
    if any(s.status == "skipped" for s in run.steps):
        return "not-verified"
    return "verified"


def _verify(run: Run, facts: Adapter, base_arg: Optional[str], out: Optional[Path],
            tolerance: Optional[float], trust_remote_code: bool, merge_dtype: Optional[str],
            state: dict[str, Any], offload: Optional[Path] = None) -> None:
    base = run.step("resolve base", "finding the base model", lambda: resolve_base(facts, base_arg))
    state["base"] = base.display
    state["device"] = device = run.step("device", "choosing the device", lambda: _device(state["device"]))
    dtype = state["dtype"] = _dtype(state["dtype"], base, device)
    tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[dtype]
    if base.bnb_quantized:
        run.step("bitsandbytes", "checking bitsandbytes", lambda: _bitsandbytes(device))
        if tolerance is None:
            tol = max(tol, QUANTIZED_TOLERANCE_FLOOR)
    _warn_pickles(run, facts, base)
    if not base.bnb_quantized and facts.peft_type == "LORA":
        reason = large.too_large(base)
        if reason:
            budget = accelerate_budget(run, facts, base, dtype, device, offload)
            if budget is not None:
                return verify_offloaded(run, facts, base, out, dtype, tol, reason, budget, offload, trust_remote_code,
                                        state)
            return verify_layer_by_layer(run, facts, base, out, dtype, reason, state, trust_remote_code)
    if offload is not None:
        run.notes.append("--offload-folder not used: " + (
            "the base fits in memory and was loaded whole" if not base.bnb_quantized and facts.peft_type == "LORA"
            else "it applies to LoRA adapters on a base not quantized; the base was loaded whole"))
    verify_in_memory(run, facts, base, out, dtype, merge_dtype, device, tol, trust_remote_code, state)


def _device(requested: str) -> tuple[str, str]:
    import torch

    available = torch.cuda.is_available()
    if requested == "auto":
        return ("cuda", "CUDA available") if available else ("cpu", "no CUDA device: CPU")
    if requested.startswith("cuda"):
        if not available:
            raise Skip(f"{requested} requested but this torch ({torch.__version__}) sees no CUDA device")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise Skip(f"{requested} requested but only {torch.cuda.device_count()} CUDA device(s) present")
        return requested, torch.cuda.get_device_name(index)
    return requested, ""


def _dtype(requested: str, base: Base, device: str) -> str:
    if requested != "auto":
        return requested
    # The precision the base was published in is the one it is deployed in.
    saved = base.saved_dtype
    return saved if saved in DTYPES[1:] else "float32"


def _bitsandbytes(device: str) -> tuple[None, str]:
    """Import bitsandbytes and run one 4-bit layer on the device: importing alone proves little, as
    builds without a kernel for this device import fine and fail at the first forward."""
    try:
        import bitsandbytes
        import torch

        layer = bitsandbytes.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to(device)
        with torch.no_grad():
            layer(torch.ones(1, 64, device=device))
    except Exception as exc:  # ImportError, a native library that fails to load, no kernel for the device
        raise Skip("the base is saved quantized with bitsandbytes, and bitsandbytes cannot run here "
                   f"({one_line(exc)}): nothing was verified") from None
    return None, f"bitsandbytes {getattr(bitsandbytes, '__version__', '?')} runs on {device}"


def _warn_pickles(run: Run, facts: Adapter, base: Base) -> None:
    note_pickled_adapter(run, facts)
    if base.pickle_only:
        run.say("warning: the base's weights are pickles; loading them with weights_only=True")
        run.notes.append("the base's weights are pickle files: loaded with weights_only=True")
