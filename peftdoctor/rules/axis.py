"""The adapter under the chosen (peft, transformers) pair (PD380-PD382), from the measured transformers axis.

peft/transformers_axis.py answers from tables measured with the real releases side by side: whether the
pair imports at all, and what adapters of a given layout computed when the pair loaded them (MoE experts saved
per expert under transformers 4.x against the fused experts of 5.x, vision towers renamed, fused-expert
adapters saved under 5.x read by 4.x). An adapter is compared with the measured ones of its base's model_type;
without a base, with those of every model type whose measured layouts hold all of its modules, and judged
only where they all agree.
"""
from __future__ import annotations

from typing import Optional

from peftdoctor.model.findings import Finding
from peftdoctor.peft import architectures, transformers_axis
from peftdoctor.peft.transformers_axis import Application
from peftdoctor.rules import Context
from peftdoctor.rules.registry import rule


def axis_findings(ctx: Context, chosen: bool = True) -> list[Finding]:
    """`chosen`: the transformers release was named (--transformers), not defaulted to the installed one; a
    peft release named alone (--peft) is judged for how it loads, not for importing beside this machine's
    transformers."""
    if ctx.transformers is None:
        return []
    peft, transformers = ctx.target.name, ctx.transformers
    failure = transformers_axis.import_failure(peft, transformers)
    if failure is not None:
        return [] if not chosen else [rule("PD380").finding(
            f"peft {peft} does not import with transformers {transformers}: `import peft` raises \"{failure}\" "
            "(measured with both releases installed side by side)",
            "install a transformers release this peft imports with (or another peft); `check --transformers "
            "VERSION` judges another pair")]
    saved = _saved(ctx)
    model_types = [ctx.base.model_type] if ctx.base is not None else _candidates(saved)
    judged = [_judged(_measured(mt, peft, transformers), saved) for mt in model_types]
    verdicts = {(j[0].outcome, j[0].error, j[1]) if j else None for j in judged}
    if len(verdicts) != 1 or judged[0] is None:  # without a base, the layouts it may be disagree: no verdict
        return []
    return [_finding(judged[0][0], peft, transformers, judged[0][1])]


def _saved(ctx: Context) -> frozenset[str]:
    return frozenset(architectures.fold(t.module) for t in ctx.adapter.tensors.values() if t.family == "lora")


def _candidates(saved: frozenset[str]) -> list[str]:
    """Without a base: the model types whose measured layouts, together, save every one of these modules."""
    by_type: dict[str, set[str]] = {}
    for case, names in transformers_axis.layouts().items():
        by_type.setdefault(case.split("/")[0], set()).update(names)
    return sorted(t for t, names in by_type.items() if saved and saved <= names)


def _measured(model_type: Optional[str], peft: str, transformers: str) -> list[tuple[str, Application]]:
    return [(case, got) for case in transformers_axis.layouts() if case.split("/")[0] == model_type
            for got in [transformers_axis.application(peft, transformers, case)] if got is not None]


def _judged(measured: list[tuple[str, Application]],
            saved: frozenset[str]) -> Optional[tuple[Application, frozenset[str]]]:
    """Module by module: a module that a measured adapter saved and lost under the pair computes the base; an
    adapter saving a module that only failing measured adapters saved fails as they did."""
    layouts = transformers_axis.layouts()
    loading = set().union(*(set(layouts[c]) for c, got in measured if got.outcome != "fails"))
    for case, got in measured:
        if got.outcome == "fails" and saved & (set(layouts[case]) - loading):
            return got, frozenset()
    lost = [got for _, got in measured if saved & set(got.dropped)]
    return (lost[0], saved & frozenset().union(*(g.dropped for g in lost))) if lost else None


def _finding(got: Application, peft: str, transformers: str, dropped: frozenset[str]) -> Finding:
    where = (f"measured: a tiny {got.case.split('/')[0]} adapter of this layout written by "
             f"{transformers_axis.writer(got.case)}, loaded by {got.measured}")
    if got.outcome == "fails":
        return rule("PD382").finding(
            f"under peft {peft} + transformers {transformers} loading this adapter fails: \"{got.error}\" ({where})",
            "load it with the transformers major version it was saved under, or re-save it from there",
            key="target_modules")
    return rule("PD381").finding(
        f"under peft {peft} + transformers {transformers} the adapter loads without an error but {len(dropped)} "
        f"of its adapted modules get no weights and compute the base: {', '.join(sorted(dropped))} ({where})",
        "load it with the transformers it was trained under, or with a peft release that converts its keys "
        "for this transformers (check --peft/--transformers name which pairs compute it)", key="target_modules")
