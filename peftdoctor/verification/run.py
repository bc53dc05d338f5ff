"""`verify`: load base + adapter with the installed peft, probe, merge, probe, save, reload, probe.

Each step is timed and recorded. A step that cannot run here (no GPU, base not cached,
bitsandbytes unusable) is skipped with its reason and ends the run as "not-verified"; a step that
fails ends it as "failed"; only unusable input raises (UnusableInput, one line).
"""
from __future__ import annotations

import gc
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.merge import plan as P
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding, Severity
from peftdoctor.peft import releases
from peftdoctor.rules.registry import rule
from peftdoctor.verification import base as basemod
from peftdoctor.verification import facts as adapter_facts
from peftdoctor.verification import large
from peftdoctor.verification import merged as merged_judge
from peftdoctor.verification.facts import BaseUnavailable, find_base, read_adapter
from peftdoctor.verification.merge import MergeNotFinite, merge, tied_and_adapted, untie
from peftdoctor.verification.probe import DEFAULT_TOLERANCE, compare, forward, probe_inputs
from peftdoctor.verification.result import Parity, Step, Verdict, VerifyReport
from peftdoctor.verification.save import check_out, save_merged

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# The 4-bit forward dequantizes block-wise on the fly; against a merge into the dequantized
# weights it differs by the rounding of those blocks, so its floor is the float16 tolerance.
QUANTIZED_TOLERANCE_FLOOR = DEFAULT_TOLERANCE["float16"]
Progress = Callable[[str], None]


class _Stop(Exception):
    """Ends the run early; the step that raised it is already recorded."""


class _Skip(Exception):
    """This step cannot run here; the message says why."""


class _Run:
    """Collects steps, findings and parity figures while the verification proceeds."""

    def __init__(self, progress: Optional[Progress]) -> None:
        self.say: Progress = progress or (lambda _message: None)
        self.steps: list[Step] = []
        self.findings: list[Finding] = []
        self.parity: list[Parity] = []
        self.notes: list[str] = []

    def step(self, name: str, message: str, action: Callable[[], tuple[Any, str]]) -> Any:
        self.say(message)
        start = time.perf_counter()
        try:
            value, detail = action()
        except _Skip as exc:
            self.steps.append(Step(name, "skipped", time.perf_counter() - start, str(exc)))
            raise _Stop from None
        except (_Stop, UnusableInput, KeyboardInterrupt):
            raise
        except MergeNotFinite as exc:
            self.findings.append(rule("PD306").finding(str(exc), "retrain or repair the adapter: its weights "
                                                       "hold NaN/inf or overflow in this dtype"))
            self.steps.append(Step(name, "failed", time.perf_counter() - start, str(exc)))
            raise _Stop from None
        except Exception as exc:  # the user's model failing is a result to report, not our crash
            self.steps.append(Step(name, "failed", time.perf_counter() - start, _one_line(exc)))
            raise _Stop from exc
        self.steps.append(Step(name, "ok", time.perf_counter() - start, detail))
        return value

    def skip(self, name: str, reason: str) -> None:
        self.steps.append(Step(name, "skipped", 0.0, reason))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def verify(adapter: str, base: Optional[str] = None, device: str = "auto", dtype: str = "auto",
           out: Optional[str] = None, tolerance: Optional[float] = None, trust_remote_code: bool = False,
           progress: Optional[Progress] = None, merge_dtype: Optional[str] = "float32",
           merged: Optional[str] = None, offload_folder: Optional[str] = None) -> VerifyReport:
    """Verify that `adapter` loads, computes the same merged as unmerged, and saves deployable.

    merge_dtype: the precision the merge is done in before casting to `dtype` (None: in `dtype`).
    merged: instead, judge this merged model (made by any tool) against base + adapter, tensor by tensor.
    offload_folder: a base too large for memory is loaded with accelerate (device_map="auto"), what does
    not fit the GPUs and the CPU offloaded to disk here (in a subfolder removed at the end).
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
    offload = check_offload_folder(offload_folder)
    facts = read_adapter(adapter)
    out_path = check_out(out)
    run = _Run(progress)
    state: dict[str, Any] = {"device": device, "dtype": dtype, "base": None, "merge_base": None, "out": None}
    try:
        if merged is not None:
            _verify_merged(run, facts, base, merged, state)
        else:
            _verify(run, facts, base, out_path, tolerance, trust_remote_code, merge_dtype, state, offload)
    except _Stop:
        pass
    finally:
        gc.collect()
    return VerifyReport(
        adapter=facts.display, base=state["base"], peft_type=facts.peft_type, task_type=facts.task_type,
        device=state["device"], dtype=state["dtype"], peft_installed=releases.installed_peft(),
        mergeable=adapter_facts.mergeable(facts), verdict=_verdict(run, facts), steps=tuple(run.steps),
        parity=tuple(run.parity), findings=tuple(run.findings), merge_base=state["merge_base"],
        out=state["out"], notes=tuple(run.notes))


def _verdict(run: _Run, facts: Adapter) -> Verdict:
    if any(s.status == "failed" for s in run.steps) or any(p.passed is False for p in run.parity) \
            or any(f.severity is Severity.ERROR for f in run.findings):
        return "failed"
    if any(s.status == "skipped" for s in run.steps):
        return "not-verified"
    return "verified"


def _verify(run: _Run, facts: Adapter, base_arg: Optional[str], out: Optional[Path],
            tolerance: Optional[float], trust_remote_code: bool, merge_dtype: Optional[str],
            state: dict[str, Any], offload: Optional[Path] = None) -> None:
    base = run.step("resolve base", "finding the base model", lambda: _resolve_base(facts, base_arg))
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
            budget = _accelerate_budget(run, facts, base, dtype, device, offload)
            if budget is not None:
                return _offloaded(run, facts, base, out, dtype, tol, reason, budget, offload, trust_remote_code, state)
            return _layer_by_layer(run, facts, base, out, dtype, reason, state)
    if offload is not None:
        run.notes.append("--offload-folder not used: " + (
            "the base fits in memory and was loaded whole" if not base.bnb_quantized and facts.peft_type == "LORA"
            else "it applies to LoRA adapters on a base not quantized; the base was loaded whole"))

    loaded = run.step("load base", f"loading base {base.display} ({dtype}, {device})",
                      lambda: _load(base, facts, dtype, device, trust_remote_code, quantized=True))
    for key in basemod.untrained_head(loaded.missing, facts):
        run.findings.append(rule("PD302").finding(
            f"{key} is not in the base and not saved by the adapter: it is initialised at random on every load",
            f"train with modules_to_save=[{key.rsplit('.', 2)[0].split('.')[-1]!r}] so the adapter carries it",
            key="modules_to_save"))
    resized = basemod.resize_for_adapter(loaded.model, facts)
    if resized:
        run.findings.append(rule("PD309").finding(
            f"the adapter was saved for {resized[1]} vocabulary rows, the base has {resized[0]}: embeddings resized",
            "ship the tokenizer with the added tokens beside the adapter (the merged model carries it)"))
    peft_model = run.step("load adapter", "loading the adapter with PeftModel.from_pretrained",
                          lambda: _load_adapter(run, loaded.model, facts))
    inputs, reference = run.step("probe adapted", "running the probe batch through base + adapter",
                                 lambda: _probe_adapted(run, peft_model, facts, device, tol))
    del peft_model, loaded
    _free(device)
    if not adapter_facts.mergeable(facts):
        run.findings.append(rule("PD308").finding(
            f"{facts.peft_type} adds virtual tokens or prefixes, not weight deltas: there is nothing to merge",
            "deploy base + adapter with PeftModel.from_pretrained"))
        return
    quantized_note = " (the base's 4-bit forward)" if base.bnb_quantized else ""
    merged = run.step("merge", "merging the adapter into the base weights",
                      lambda: _merge(run, base, facts, dtype, merge_dtype or dtype, device, trust_remote_code, state))
    output = run.step("probe merged", "running the probe batch through the merged model",
                      lambda: (forward(merged, inputs), ""))
    parity = compare(f"merged vs adapted{quantized_note}", output, reference, tol)
    run.parity.append(parity)
    if not parity.passed:
        run.findings.append(rule("PD304").finding(
            f"merged logits differ from base + adapter by {parity.max_rel:.3g} of their scale "
            f"(tolerance {tol:.3g}; top-1 agreement {parity.top1_agreement:.1%})",
            "deploy with PeftModel instead, or merge in float32 (--dtype float32) and compare again"))
    tokenizer, source = basemod.load_tokenizer(facts, base, trust_remote_code)
    if tokenizer is None:
        run.findings.append(rule("PD311").finding("neither the adapter nor the base has a tokenizer that loads",
                                                  "save the tokenizer beside the adapter"))
    with tempfile.TemporaryDirectory(prefix="peftdoctor-verify-") as scratch:
        target = out if out is not None else Path(scratch) / "merged"
        where = run.step("save", "saving the merged model (safetensors)",
                         lambda: (save_merged(merged, tokenizer, base, target),
                                  f"tokenizer from {source}" if source else "no tokenizer"))
        if out is not None:
            state["out"] = str(where)
        else:
            run.notes.append("no --out given: the merged model was saved to a temporary directory for the "
                             "reload check and deleted; pass --out DIR to keep it")
        del merged
        _free(device)
        reloaded = run.step("reload", "reloading the saved model with transformers",
                            lambda: _reload(where, facts, dtype, device, trust_remote_code, inputs))
    again = compare(f"reloaded vs adapted{quantized_note}", reloaded, reference, tol)
    run.parity.append(again)
    if not again.passed:
        run.findings.append(rule("PD305").finding(
            f"the saved model, reloaded with {basemod.auto_class_name(facts.task_type)}, differs from base + "
            f"adapter by {again.max_rel:.3g} of the logit scale (tolerance {tol:.3g})",
            "a tied or resized layer is restored differently on reload: untie it in config.json"))


def _layer_by_layer(run: _Run, facts: Adapter, base: Base, out: Optional[Path], dtype: str,
                    reason: str, state: dict[str, Any]) -> None:
    """Too large to load whole: stream the merge into --out shard by shard, then verify it one module at a
    time (each targeted weight against base + delta, and its layer's output on a probe against peft's
    unmerged forward); without --out, each module is merged on the fly and judged the same way."""
    state["device"] = "cpu"
    run.step("memory", "measuring the memory available",
             lambda: (None, f"{reason}: verified layer by layer, one module in memory at a time, on the CPU"))
    merged_base: Optional[Base] = None
    if out is not None:
        if out.is_dir():
            out.rmdir()  # check_out() made sure it is empty; the streaming merge creates it itself
        run.step("merge (streaming)", "streaming the merge shard by shard",
                 lambda: _streamed(facts, base, out, dtype, allow_noop=False))
        state["out"] = str(out)
        merged_base = merged_judge.merged_base(out)
    else:
        run.notes.append("no --out given: each targeted module was merged on the fly (as the streaming merge "
                         "does) and judged; pass --out DIR to write and verify the merged model")
    _judge_into(run, facts, base, merged_base, "layer parity",
                "checking the merged model layer by layer against base + adapter")
    state["merge_base"] = f"{base.display} weights in {dtype}"


def _streamed(facts: Adapter, base: Base, out: Path, dtype: str, allow_noop: bool) -> tuple[Any, str]:
    from peftdoctor.merge import stream_merge

    report = stream_merge(str(facts.directory), str(base.directory), str(out), dtype=dtype, allow_noop=allow_noop)
    return report, (f"{report.tensors_merged} tensors merged with peft's per-layer merge, "
                    f"{report.tensors_passed} copied; peak RSS {report.peak_rss_bytes / 2**30:.2f} GiB")


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


def _accelerate_budget(run: _Run, facts: Adapter, base: Base, dtype: str, device: str,
                       offload: Optional[Path]) -> Optional[dict[Any, int]]:
    """accelerate's max_memory when this too-large base can be loaded across the devices present (GPUs,
    CPU, --offload-folder) and the adapter probed on it, else None (layer by layer, noted when asked for)."""
    from peftdoctor.verification import offload as accelerated

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


def _offloaded(run: _Run, facts: Adapter, base: Base, out: Optional[Path], dtype: str, tol: float, reason: str,
               budget: dict[Any, int], offload: Optional[Path], trust_remote_code: bool,
               state: dict[str, Any]) -> None:
    """Too large for memory, not for the devices present: accelerate's big-model loading (device_map="auto",
    max_memory, offload folder) for base + adapter, whose probe is the reference; the merge is streamed
    into --out (or a temporary folder) and loaded the same way to be probed against it."""
    from peftdoctor.verification import offload as accelerated

    limits = ", ".join(f"{'cpu' if d == 'cpu' else f'cuda:{d}'} {large.size_text(n)}" for d, n in budget.items())
    run.step("memory", "measuring the memory available", lambda: (None, (
        f"{reason}: loaded with accelerate (device_map=auto, max_memory {limits}"
        + (f", offload folder {offload}" if offload is not None else "") + ")")))
    with accelerated.work_folder(offload) as scratch:
        placement = accelerated.placement(budget, scratch / "offload" if offload is not None else None)
        inputs, reference = _offloaded_reference(run, facts, base, dtype, tol, placement, trust_remote_code, scratch,
                                                 state)
        _free(state["device"])
        target = out if out is not None else scratch / "merged"
        if target.is_dir():
            target.rmdir()  # check_out() made sure it is empty; the streaming merge creates it itself
        run.step("merge (streaming)", "streaming the merge shard by shard",
                 lambda: _streamed(facts, base, target, dtype, allow_noop=True))
        if out is not None:
            state["out"] = str(out)
        else:
            run.notes.append("no --out given: the merged model was streamed to a temporary directory"
                             + (f" in {offload}" if offload is not None else "") + ", probed and deleted; "
                             "pass --out DIR to keep it")
        state["merge_base"] = f"{base.display} weights in {dtype}"
        output = run.step("probe merged", "loading the merged model with accelerate and running the probe batch",
                          lambda: _probe_dispatched(target, facts, dtype, placement, trust_remote_code, inputs))
    parity = compare("merged vs adapted", output, reference, tol)
    run.parity.append(parity)
    if not parity.passed:
        run.findings.append(rule("PD304").finding(
            f"merged logits differ from base + adapter by {parity.max_rel:.3g} of their scale "
            f"(tolerance {tol:.3g}; top-1 agreement {parity.top1_agreement:.1%})",
            "deploy with PeftModel instead, or merge again with `peftdoctor merge`"))


def _offloaded_reference(run: _Run, facts: Adapter, base: Base, dtype: str, tol: float, placement: dict[str, Any],
                         trust_remote_code: bool, scratch: Path, state: dict[str, Any]) -> tuple[Any, Any]:
    """Load the base dispatched by accelerate, attach the adapter, probe: the reference the merge must match.
    Returns (inputs, reference logits); the models are released on return."""
    from peftdoctor.verification import offload as accelerated

    loaded = run.step("load base", f"loading base {base.display} with accelerate ({dtype}, device_map=auto)",
                      lambda: _load_dispatched(base, facts, dtype, placement, trust_remote_code, scratch))
    state["device"] = device = accelerated.main_device(loaded.model.hf_device_map)
    for key in basemod.untrained_head(loaded.missing, facts):
        run.findings.append(rule("PD302").finding(
            f"{key} is not in the base and not saved by the adapter: it is initialised at random on every "
            "load", f"train with modules_to_save=[{key.rsplit('.', 2)[0].split('.')[-1]!r}] so the adapter "
            "carries it", key="modules_to_save"))
    peft_model = run.step("load adapter", "loading the adapter with PeftModel.from_pretrained onto the "
                          "dispatched base", lambda: _attach(run, loaded.model, facts))
    return run.step("probe adapted", "running the probe batch through base + adapter",
                    lambda: _probe_adapted(run, peft_model, facts, device, tol))


def _load_dispatched(base: Base, facts: Adapter, dtype: str, placement: dict[str, Any], trust_remote_code: bool,
                     scratch: Path) -> tuple[basemod.LoadedBase, str]:
    from peftdoctor.verification import offload as accelerated

    loaded = basemod.load_base(base, facts, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code,
                               quantized=False, placement=placement)
    device_map = getattr(loaded.model, "hf_device_map", None) or {"": "cpu"}
    loaded.model.hf_device_map = device_map
    folder = Path(placement["offload_folder"]) if "offload_folder" in placement else None
    return loaded, (f"{type(loaded.model).__name__}, {dtype}; loaded with accelerate device_map=auto: "
                    f"{accelerated.describe(device_map, folder)}")


def _attach(run: _Run, model: Any, facts: Adapter) -> tuple[Any, str]:
    from peftdoctor.verification import offload as accelerated

    rows = basemod.resized_rows(model, facts)
    if rows is not None:
        raise _Skip(f"the adapter was saved for {rows[1]} vocabulary rows, the base has {rows[0]}: a model "
                    "dispatched by accelerate cannot be resized; run without --offload-folder (layer by layer)")
    try:
        peft_model = accelerated.attach_adapter(model, str(facts.directory))
    except Exception as exc:
        run.findings.extend(_load_failure_findings(facts, exc))
        raise
    return peft_model, (f"{type(peft_model).__name__}; adapter weights loaded onto each layer's execution device "
                        "(peft alone re-dispatches an offloaded base and leaves them on meta)")


def _probe_dispatched(directory: Path, facts: Adapter, dtype: str, placement: dict[str, Any],
                      trust_remote_code: bool, inputs: dict[str, Any]) -> tuple[Any, str]:
    from peftdoctor.verification import offload as accelerated

    loaded = basemod.load_base(merged_judge.merged_base(directory), facts, dtype=dtype, device="cpu",
                               trust_remote_code=trust_remote_code, quantized=False, placement=placement)
    device_map = getattr(loaded.model, "hf_device_map", None) or {"": "cpu"}
    folder = Path(placement["offload_folder"]) if "offload_folder" in placement else None
    output = forward(loaded.model, inputs)
    del loaded
    return output, f"reloaded with transformers, device_map=auto: {accelerated.describe(device_map, folder)}"


def _verify_merged(run: _Run, facts: Adapter, base_arg: Optional[str], merged: str, state: dict[str, Any]) -> None:
    """Judge a merged model made elsewhere: every tensor against base + the adapter's delta."""
    base = run.step("resolve base", "finding the base model", lambda: _resolve_base(facts, base_arg))
    state["base"], state["device"] = base.display, "cpu"
    why = None if facts.config is None else P.refusal(facts.config)
    if why is not None:
        run.skip("compare tensors", why.split(" cannot be stream-merged")[0] + " cannot be judged tensor by tensor: "
                 "only LoRA merges (rsLoRA, DoRA, rank/alpha patterns included) are")
        return
    P.require_weights(facts)
    found = run.step("read merged", f"reading the merged model {merged}", lambda: _read_merged(merged))
    state["dtype"] = found.saved_dtype or "auto"
    state["merge_base"] = f"{merged} (made elsewhere), against {base.display}"
    outcome = _judge_into(run, facts, base, found, "compare tensors",
                          "comparing the merged model with base + adapter, tensor by tensor")
    if outcome is not None and outcome.merged_dtype:
        state["dtype"] = outcome.merged_dtype


def _read_merged(directory: str) -> tuple[Base, str]:
    found = merged_judge.merged_base(Path(directory))
    layout = P.read_layout(found)  # every shard's header: a damaged or missing shard is unusable input
    count = sum(len(shard.tensors) for shard in layout.shards)
    return found, (f"{count} tensors in {len(layout.shards)} shard(s), "
                   f"tie_word_embeddings={found.tie_word_embeddings}")


def _judge_into(run: _Run, facts: Adapter, base: Base, merged: Optional[Base], name: str,
                message: str) -> Optional[merged_judge.Outcome]:
    outcome = run.step(name, message, lambda: _judged(facts, base, merged, run.say))
    run.findings.extend(outcome.findings)
    run.notes.extend(outcome.notes)
    parity = outcome.parity()
    if parity is not None:
        run.parity.append(parity)
        if not parity.passed:
            failing = [p.module for p in outcome.layers if not p.passed]
            run.findings.append(rule("PD304").finding(
                f"layer by layer, {len(failing)} merged module(s) compute something else than base + adapter on "
                f"the probe (worst relative difference {parity.max_rel:.3g}, rounding allows {parity.tolerance:.3g}): "
                f"{', '.join(failing[:3])}" + (" ..." if len(failing) > 3 else ""),
                "see the tensor findings; merge again with `peftdoctor merge`"))
    return outcome


def _judged(facts: Adapter, base: Base, merged: Optional[Base], say: Progress) -> tuple[Any, str]:
    outcome = merged_judge.judge(facts, base, merged, say)
    parity = outcome.parity()
    probe = (f"; probe: worst relative output difference {parity.max_rel:.3g} (rounding allows "
             f"{parity.tolerance:.3g})") if parity is not None else ""
    return outcome, outcome.summary() + probe


def _resolve_base(facts: Adapter, base_arg: Optional[str]) -> tuple[Base, str]:
    try:
        found = find_base(facts, base_arg)
    except BaseUnavailable as exc:
        raise _Skip(str(exc)) from None
    return found, str(found.directory)


def _device(requested: str) -> tuple[str, str]:
    import torch

    available = torch.cuda.is_available()
    if requested == "auto":
        return ("cuda", "CUDA available") if available else ("cpu", "no CUDA device: CPU")
    if requested.startswith("cuda"):
        if not available:
            raise _Skip(f"{requested} requested but this torch ({torch.__version__}) sees no CUDA device")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise _Skip(f"{requested} requested but only {torch.cuda.device_count()} CUDA device(s) present")
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
        raise _Skip("the base is saved quantized with bitsandbytes, and bitsandbytes cannot run here "
                    f"({_one_line(exc)}): nothing was verified") from None
    return None, f"bitsandbytes {getattr(bitsandbytes, '__version__', '?')} runs on {device}"


def _warn_pickles(run: _Run, facts: Adapter, base: Base) -> None:
    if facts.pickle_only:
        run.say("warning: adapter_model.bin is a pickle; loading it with torch.load(weights_only=True)")
        run.findings.append(rule("PD203").finding(
            "adapter_model.bin is a pickle: loaded with weights_only=True (tensors only, no code)",
            "re-save the adapter with safe_serialization=True", file="adapter_model.bin"))
    if base.pickle_only:
        run.say("warning: the base's weights are pickles; loading them with weights_only=True")
        run.notes.append("the base's weights are pickle files: loaded with weights_only=True")


def _load(base: Base, facts: Adapter, dtype: str, device: str, trust_remote_code: bool,
          quantized: bool) -> tuple[basemod.LoadedBase, str]:
    try:
        loaded = basemod.load_base(base, facts, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                   quantized=quantized)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            # transformers' own text spans lines; the one-line step detail must still say what to do.
            raise ValueError(f"{base.display} needs its own Python code to load, which was not run: read it, "
                             "then pass --trust-remote-code") from None
        raise
    kind = "4-bit/8-bit (bitsandbytes)" if base.bnb_quantized and quantized else dtype
    return loaded, f"{type(loaded.model).__name__} ({basemod.auto_class_name(facts.task_type)}), {kind}"


def _load_adapter(run: _Run, model: Any, facts: Adapter) -> tuple[Any, str]:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(facts.directory), is_trainable=False)
    except Exception as exc:
        run.findings.extend(_load_failure_findings(facts, exc))
        raise
    peft_model.eval()
    return peft_model, type(peft_model).__name__


def _load_failure_findings(facts: Adapter, exc: Exception) -> list[Finding]:
    """The failure itself (PD301), plus the findings of `check` that explain it."""
    from peftdoctor.ops.check import check

    explained: list[Finding] = []
    try:
        explained = [f for f in check(str(facts.directory)).findings if f.severity is Severity.ERROR]
    except UnusableInput:
        pass
    hint = "see the findings below" if explained else "check that --base is the model the adapter was trained on"
    if "size mismatch" in str(exc) and not explained:
        hint = "shapes differ from the base: another base, or a vocabulary resized in training without its embeddings"
    return [rule("PD301").finding(f"PeftModel.from_pretrained failed: {_one_line(exc)}", hint), *explained]


def _probe_adapted(run: _Run, peft_model: Any, facts: Adapter, device: str, tol: float) -> tuple[Any, str]:
    inputs = probe_inputs(peft_model, facts.task_type, device)
    adapted = forward(peft_model, inputs)
    with peft_model.disable_adapter():
        plain = forward(peft_model, inputs)
    effect = compare("adapted vs base", adapted, plain, tol)
    if effect.max_abs == 0:
        run.findings.append(rule("PD303").finding(
            "the adapter changes nothing: base and base + adapter give identical outputs on the probe",
            "the adapter's weights are zero or no-op (an untrained LoRA B, IA3 ones): save it after training"))
    elif effect.max_rel <= tol:
        run.findings.append(rule("PD312").finding(
            f"the adapter changes the output by only {effect.max_rel:.3g} of its scale, within the tolerance",
            "pass a smaller --tolerance to make the parity check meaningful"))
    return (inputs, adapted), f"adapter changes the output by {effect.max_rel:.3g} of its scale"


def _merge(run: _Run, base: Base, facts: Adapter, dtype: str, merge_dtype: str, device: str,
           trust_remote_code: bool, state: dict[str, Any]) -> tuple[Any, str]:
    from peft import PeftModel

    loaded = basemod.load_base(base, facts, dtype=merge_dtype, device=device, trust_remote_code=trust_remote_code,
                               quantized=False)
    model = loaded.model
    basemod.resize_for_adapter(model, facts)
    tied = tied_and_adapted(model, facts)
    if tied:
        untie(model)
        run.findings.append(rule("PD307").finding(
            f"{tied[0]} and {tied[1]} share one matrix and the adapter changes it: the merged model is saved "
            "with tie_word_embeddings false, so a reload keeps both trained matrices",
            "nothing to do; a loader that forces tying would lose the difference", key="tie_word_embeddings"))
    if base.bnb_quantized:
        state["merge_base"] = ("dequantized 4-bit weights (what the adapter was trained against); "
                               "full-precision weights: not available, the base is saved quantized")
        run.findings.append(rule("PD310").finding(
            "the base is saved quantized: the adapter was merged into its dequantized weights, not re-quantized",
            "deploy the merged model in the dtype shown; quantize it again only after checking its parity"))
    else:
        state["merge_base"] = f"{base.display} weights in {merge_dtype}"
    peft_model = PeftModel.from_pretrained(model, str(facts.directory), is_trainable=False)
    merged = merge(peft_model)
    if merge_dtype != dtype:
        merged = merged.to(basemod.torch_dtype(dtype))
    merged.eval()
    return merged, f"merged in {merge_dtype}" + (f", cast to {dtype}" if merge_dtype != dtype else "") + \
        (", safe_merge NaN check passed")


def _reload(directory: Path, facts: Adapter, dtype: str, device: str, trust_remote_code: bool,
            inputs: dict[str, Any]) -> tuple[Any, str]:
    import transformers

    cls = getattr(transformers, basemod.auto_class_name(facts.task_type))
    model = cls.from_pretrained(str(directory), dtype=basemod.torch_dtype(dtype),
                                trust_remote_code=trust_remote_code).to(device)
    model.eval()
    output = forward(model, inputs)
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", None) \
        if hasattr(model.config, "get_text_config") else getattr(model.config, "tie_word_embeddings", None)
    del model
    return output, f"{cls.__name__}, tie_word_embeddings={tied}"


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
