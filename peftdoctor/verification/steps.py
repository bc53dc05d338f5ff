"""The step recorder every verification path writes into, and the steps and findings the paths share.

`Run.step` times one step and records it: "ok" with its detail, "skipped" when it raises `Skip` (it
cannot run here), "failed" when it raises anything else (the user's model failing is a result, not
our crash); both end the run with `Stop`. torch and peft are imported inside the functions.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput, WriteFailed, message_line
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding, Severity
from peftdoctor.rules.registry import rule
from peftdoctor.verification import base as basemod
from peftdoctor.verification.facts import BaseUnavailable, find_base
from peftdoctor.verification.merge import MergeNotFinite
from peftdoctor.verification.probe import compare, forward, probe_inputs
from peftdoctor.verification.result import Parity, Step

Progress = Callable[[str], None]


class Stop(Exception):
    """Ends the run early; the step that raised it is already recorded."""


class Skip(Exception):
    """This step cannot run here; the message says why."""


class Run:
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
        except Skip as exc:
            self.steps.append(Step(name, "skipped", time.perf_counter() - start, str(exc)))
            raise Stop from None
        except (Stop, UnusableInput, WriteFailed, KeyboardInterrupt):  # not a verdict: exit 2 or 130
            raise
        except MergeNotFinite as exc:
            self.findings.append(rule("PD306").finding(str(exc), "retrain or repair the adapter: its weights "
                                                       "hold NaN/inf or overflow in this dtype"))
            self.steps.append(Step(name, "failed", time.perf_counter() - start, str(exc)))
            raise Stop from None
        except Exception as exc:  # the user's model failing is a result to report, not our crash
            self.steps.append(Step(name, "failed", time.perf_counter() - start, one_line(exc)))
            raise Stop from exc
        self.steps.append(Step(name, "ok", time.perf_counter() - start, detail))
        return value

    def skip(self, name: str, reason: str) -> None:
        self.steps.append(Step(name, "skipped", 0.0, reason))


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {message_line(str(exc), 480)}"


def resolve_base(facts: Adapter, base_arg: Optional[str]) -> tuple[Base, str]:
    """The "resolve base" step's action: the base found, or Skip when it is not available here."""
    try:
        found = find_base(facts, base_arg)
    except BaseUnavailable as exc:
        raise Skip(str(exc)) from None
    return found, str(found.directory)


def note_pickled_adapter(run: Run, facts: Adapter) -> None:
    """PD203 when the adapter's weights are a pickle (peft reads it with torch.load(weights_only=True))."""
    if facts.pickle_only:
        run.say("warning: adapter_model.bin is a pickle; loading it with torch.load(weights_only=True)")
        run.findings.append(rule("PD203").finding(
            "adapter_model.bin is a pickle: loaded with weights_only=True (tensors only, no code)",
            "re-save the adapter with safe_serialization=True", file="adapter_model.bin"))


def note_untrained_head(run: Run, missing: Any, facts: Adapter) -> None:
    """PD302 for each head the base lacks and the adapter does not save (`missing`: the base's missing keys)."""
    for key in basemod.untrained_head(missing, facts):
        run.findings.append(rule("PD302").finding(
            f"{key} is not in the base and not saved by the adapter: it is initialised at random on every load",
            f"train with modules_to_save=[{key.rsplit('.', 2)[0].split('.')[-1]!r}] so the adapter carries it",
            key="modules_to_save"))


def load_failure_findings(facts: Adapter, exc: Exception) -> list[Finding]:
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
    return [rule("PD301").finding(f"PeftModel.from_pretrained failed: {one_line(exc)}", hint), *explained]


def probe_adapted(run: Run, peft_model: Any, facts: Adapter, device: str, tol: float) -> tuple[Any, str]:
    """The "probe adapted" step's action: ((inputs, adapted logits), detail); PD303/PD312 when the adapter
    changes nothing, or less than the tolerance."""
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


def judge_merged_output(run: Run, name: str, output: Any, reference: Any, tol: float, fix: str) -> None:
    """Record the merged model's parity with base + adapter on the probe, and PD304 when it fails."""
    parity = compare(name, output, reference, tol)
    run.parity.append(parity)
    if not parity.passed:
        run.findings.append(rule("PD304").finding(
            f"merged logits differ from base + adapter by {parity.max_rel:.3g} of their scale "
            f"(tolerance {tol:.3g}; top-1 agreement {parity.top1_agreement:.1%})", fix))


def streamed_merge(facts: Adapter, base: Base, out: Path, dtype: str, allow_noop: bool,
                   trust_remote_code: bool) -> tuple[Any, str]:
    """The "merge (streaming)" step's action: peftdoctor's streaming merge into `out`."""
    from peftdoctor.merge import stream_merge

    report = stream_merge(str(facts.directory), str(base.directory), str(out), dtype=dtype, allow_noop=allow_noop,
                          trust_remote_code=trust_remote_code)
    return report, (f"{report.tensors_merged} tensors merged with peft's per-layer merge, "
                    f"{report.tensors_passed} copied; peak RSS {report.peak_rss_bytes / 2**30:.2f} GiB")


def free(device: str) -> None:
    """Collect what the step before released (and CUDA's cached blocks with it)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
