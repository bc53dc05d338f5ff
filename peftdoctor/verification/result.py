"""The result of `verify`: plain frozen data, rendered as text or JSON. Nothing here imports torch.

A verification is a list of steps (each ok, failed or skipped, with its time), the parity figures
that compare one forward pass against another, and findings with PD3xx codes. "Could not verify"
(no GPU, base not cached, bitsandbytes unusable) is a skipped step, never an exception.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from peftdoctor.model.findings import FORMAT_VERSION, Finding, Severity

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


def to_dict(report: VerifyReport) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "adapter": report.adapter,
        "base": report.base,
        "peft_type": report.peft_type,
        "task_type": report.task_type,
        "device": report.device,
        "dtype": report.dtype,
        "peft_installed": report.peft_installed,
        "mergeable": report.mergeable,
        "merge_base": report.merge_base,
        "verdict": report.verdict,
        "out": report.out,
        # Seconds are rounded so that two runs differ only where the machine really did.
        "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 2), "detail": s.detail}
                  for s in report.steps],
        "parity": [{"name": p.name, "max_abs": p.max_abs, "max_rel": p.max_rel,
                    "top1_agreement": p.top1_agreement, "tolerance": p.tolerance, "passed": p.passed}
                   for p in report.parity],
        "findings": [f.to_dict() for f in report.findings],
        "notes": list(report.notes),
    }


def render_json(report: VerifyReport) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=True) + "\n"


_MARK = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}


def render_text(report: VerifyReport) -> str:
    lines = [f"{report.adapter}: {report.peft_type or '?'} adapter ({report.task_type or 'no task_type'}) "
             f"on {report.base or '?'}, {report.device} {report.dtype}"]
    for s in report.steps:
        detail = f"  {s.detail}" if s.detail else ""
        lines.append(f"  [{_MARK[s.status]}] {s.name:<15} {s.seconds:7.2f}s{detail}")
    for p in report.parity:
        lines.append(f"  parity {p.name}: max abs {p.max_abs:.3g}, max rel {p.max_rel:.3g} "
                     f"(tolerance {p.tolerance:.3g}), top-1 agreement {p.top1_agreement:.1%}"
                     f" -> {'ok' if p.passed else 'FAILED'}")
    if report.merge_base:
        lines.append(f"  merge base: {report.merge_base}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    for f in report.findings:
        lines.append(f"  {f.code} {f.severity.value}: {f.message}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    if not report.mergeable and report.verdict == "verified":
        lines.append("  not mergeable, deploy with PeftModel (load and forward verified)")
    if report.out:
        lines.append(f"  merged model: {report.out}")
    lines.append(f"  verdict: {report.verdict}")
    return "\n".join(lines) + "\n"
