"""Render what `verify` returns: one line per step and parity figure for people, every field for machines."""
from __future__ import annotations

import json
from typing import Any

from peftdoctor.model.findings import FORMAT_VERSION
from peftdoctor.render.terminal import lines as text_lines
from peftdoctor.verification.result import LoadOnlyResult, VerifyReport


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
        "load": None if report.load is None else load_dict(report.load),
    }


def load_dict(load: LoadOnlyResult) -> dict[str, Any]:
    return {"verdict": load.verdict, "peft": load.peft, "transformers": load.transformers,
            "base_class": load.base_class, "share_applied": round(load.share, 4), "applied": list(load.applied),
            "unexpected": list(load.unexpected), "copies": list(load.copies), "missing": list(load.missing),
            "unadapted": [{"module": u.module, "computes": u.computes, "missing": list(u.missing)}
                          for u in load.unadapted],
            "adapted_modules": list(load.adapted_modules), "error": load.error, "warnings": list(load.warnings)}


def render_json(report: VerifyReport) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=True) + "\n"


_MARK = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}


def render_text(report: VerifyReport) -> str:
    where = "meta device (no weights read)" if report.device == "meta" else f"{report.device} {report.dtype}"
    lines = [f"{report.adapter}: {report.peft_type or '?'} adapter ({report.task_type or 'no task_type'}) "
             f"on {report.base or '?'}, {where}"]
    for s in report.steps:
        detail = f"  {s.detail}" if s.detail else ""
        lines.append(f"  [{_MARK[s.status]}] {s.name:<15} {s.seconds:7.2f}s{detail}")
    for p in report.parity:
        lines.append(f"  parity {p.name}: max abs {p.max_abs:.3g}, max rel {p.max_rel:.3g} "
                     f"(tolerance {p.tolerance:.3g}), top-1 agreement {p.top1_agreement:.1%}"
                     f" -> {'ok' if p.passed else 'FAILED'}")
    if report.merge_base:
        lines.append(f"  merge base: {report.merge_base}")
    if report.load is not None:
        lines += _load_lines(report.load)
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
    return text_lines(lines)



# What a module left without weights computes, in words.
_COMPUTES = {"base": "computes the base", "random": "computes its random initialisation (init false)",
             "initial": "computes its initialisation", "partly loaded": "partly loaded, the rest initial"}
_LISTED = 20  # names listed per kind before "... and N more": the JSON has them all


def _load_lines(load: LoadOnlyResult) -> list[str]:
    total = len(load.applied) + len(load.unexpected)
    lines = [f"  load-only (peft {load.peft}, transformers {load.transformers}, {load.base_class} on meta): "
             f"{len(load.applied)} of {total} saved tensors applied ({load.share:.0%}), "
             f"{len(load.adapted_modules)} module(s) adapted, {len(load.unadapted)} without weights"]
    lines += _listed("goes nowhere (unexpected key)", load.unexpected)
    lines += _listed("goes nowhere, a copy of an applied tensor (nothing lost)", load.copies)
    lines += _listed("no weights loaded", [f"{u.module} ({', '.join(u.missing)}): {_COMPUTES[u.computes]}"
                                           for u in load.unadapted])
    lines += [f"  peft warned: {w}" for w in load.warnings]
    if load.error:
        lines.append(f"  peft raised: {load.error}")
    return lines


def _listed(what: str, names: "list[str] | tuple[str, ...]") -> list[str]:
    lines = [f"    {what}: {name}" for name in names[:_LISTED]]
    return lines + ([f"    ... and {len(names) - _LISTED} more (--format json lists them all)"]
                    if len(names) > _LISTED else [])
