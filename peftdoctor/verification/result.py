"""The result of `verify`: plain frozen data, rendered by render/verify.py. Nothing here imports torch.

A verification is a list of steps (each ok, failed or skipped, with its time), the parity figures
that compare one forward pass against another, and findings with PD3xx codes. "Could not verify"
(no GPU, base not cached, bitsandbytes unusable) is a skipped step, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from peftdoctor.model.findings import Finding, Severity

StepStatus = Literal["ok", "failed", "skipped"]
# verified: every parity figure within tolerance and no error finding; failed: a parity figure or
# an error finding says the deployment would compute something else; not-verified: a step that the
# verdict needs was skipped (so nothing was proven either way).
Verdict = Literal["verified", "failed", "not-verified"]


@dataclass(frozen=True)
class Step:
    name: str
    status: StepStatus
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class Parity:
    """One forward pass against a reference on the same seeded probe batch."""

    name: str  # e.g. "merged vs adapted"
    max_abs: float
    max_rel: float  # max_abs divided by the largest reference magnitude: scale-free
    top1_agreement: float  # fraction of positions whose arg-max agrees
    tolerance: float  # bound on max_rel
    passed: bool


@dataclass(frozen=True)
class VerifyReport:
    adapter: str
    base: Optional[str]
    peft_type: Optional[str]
    task_type: Optional[str]
    device: str
    dtype: str
    peft_installed: Optional[str]
    mergeable: bool
    verdict: Verdict
    steps: tuple[Step, ...] = ()
    parity: tuple[Parity, ...] = ()
    findings: tuple[Finding, ...] = ()
    merge_base: Optional[str] = None  # which weights the merge went into (matters for QLoRA)
    out: Optional[str] = None  # where the deployable merged model now is, if it was kept
    notes: tuple[str, ...] = field(default=())

    def step(self, name: str) -> Optional[Step]:
        return next((s for s in self.steps if s.name == name), None)

    def worst(self) -> Optional[Severity]:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)
