"""Judge one tensor of a merged model against what a correct merge holds there, within rounding.

A correct merge is not bit-exact across tools: Unsloth, LLaMA-Factory, mergekit or a bf16 GPU merge
round differently than peft's float32 CPU merge. The bound on that difference is derived from the
dtypes, never a fixed number: with u the unit roundoff of the coarser of the base's and the merged
model's dtypes, a merge that rounds W, A and B to that dtype, sums the rank-r products B·A, scales
and adds them to W and rounds the result performs at most r + 2 roundings of quantities no larger
than |W|, |W + delta| and s·|B|·|A| (the "spread": the delta without cancellation), so each element
lies within (r + 2)·u·(|W| + |expected| + |merged| + spread) of the exact value (Higham's gamma_n).
DoRA's column norm and rescale add a few roundings of the same size. A tensor the adapter does not
touch must equal the base bit for bit, or be its round-to-nearest cast (within u·|W|).

When a targeted weight is not right, the least-squares ratio of (merged - base) to the expected
delta names what happened: about 0 (the merge never happened), 2 (applied twice), or another factor
(the wrong scale: 1/sqrt(r) for an rsLoRA adapter merged with alpha/r).
torch is imported inside the functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

Outcome = Literal["ok", "missing", "twice", "scaled", "differs", "shape"]
# Rows compared at a time, so that the float64 temporaries stay near CHUNK_ELEMENTS elements
# whatever the tensor's size (a 128k-row embedding is compared in slices, never whole in float64).
CHUNK_ELEMENTS = 1 << 22
# Roundings a DoRA merge adds to LoRA's: the column norm (a wide accumulator), the divide, the rescale.
DORA_ROUNDINGS = 3


def unit_roundoff(dtype: Any) -> float:
    """Half the distance from 1 to the next representable number: the relative error of one rounding."""
    import torch

    return float(torch.finfo(dtype).eps) / 2 if dtype.is_floating_point else 0.0


def coarsest(*dtypes: Any) -> Any:
    """The floating dtype with the largest rounding error among `dtypes` (float32 when none is floating)."""
    import torch

    floating = [d for d in dtypes if d.is_floating_point]
    return max(floating, key=unit_roundoff) if floating else torch.float32


def subnormal_step(dtype: Any) -> float:
    """The spacing of `dtype`'s subnormals: the absolute error of rounding a value near zero."""
    import torch

    info = torch.finfo(dtype)
    return float(info.smallest_normal) * float(info.eps)


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    factor: float = 1.0  # least-squares ratio of (merged - base) to the expected delta
    max_error: float = 0.0  # max |merged - expected|
    max_delta: float = 0.0  # max |expected - base|: the size of what the adapter changes here
    max_bound: float = 0.0  # the largest rounding bound allowed at an element
    below_rounding: bool = False  # the whole delta lies within rounding: right and base are indistinguishable


def _row_chunks(shape: tuple[int, ...]) -> list[slice]:
    rows = shape[0] if shape else 1
    per_row = max(1, math.prod(shape[1:])) if shape else 1
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [slice(i, min(rows, i + step)) for i in range(0, rows, step)] or [slice(0, 0)]


def _part(tensor: Any, rows: slice) -> Any:
    return (tensor[rows] if tensor.dim() else tensor).double()


def judge_merge(base: Any, expected: Any, merged: Any, spread: Any, u: float, roundings: int,
                floor: float = 0.0) -> Judgement:
    """Whether `merged` holds base + the adapter's delta (`expected`), each element within the rounding
    bound roundings·u·(|base| + |expected| + |merged| + spread) + floor; if not, what it holds instead."""
    import torch

    if tuple(merged.shape) != tuple(expected.shape):
        return Judgement("shape")
    right = at_base = True
    dot = norm2 = bound2 = 0.0
    max_error = max_delta = max_bound = 0.0
    chunks = _row_chunks(tuple(expected.shape))
    for rows in chunks:
        w, e, m, s = (_part(t, rows) for t in (base, expected, merged, spread))
        bound = roundings * u * (w.abs() + e.abs() + m.abs() + s) + floor
        error, obs, exp = (m - e).abs(), m - w, e - w
        if not torch.isfinite(m).all():
            return Judgement("differs", math.nan, math.inf, float(exp.abs().max()) if exp.numel() else 0.0)
        right = right and bool((error <= bound).all())
        at_base = at_base and bool((obs.abs() <= bound).all())
        dot += float((obs * exp).sum())
        norm2 += float((exp * exp).sum())
        bound2 += float((bound * bound).sum())
        if error.numel():
            max_error = max(max_error, float(error.max()))
            max_delta = max(max_delta, float(exp.abs().max()))
            max_bound = max(max_bound, float(bound.max()))
    figures = {"max_error": max_error, "max_delta": max_delta, "max_bound": max_bound}
    if right:
        return Judgement("ok", 1.0, below_rounding=at_base, **figures)
    if at_base:
        return Judgement("missing", 0.0, **figures)
    factor = dot / norm2 if norm2 > 0 else math.inf
    if not math.isfinite(factor):
        return Judgement("differs", factor, **figures)
    # A clean multiple: merged - base equals factor·delta within the bound that factor's rounding allows.
    fits = True
    for rows in chunks:
        w, e, m, s = (_part(t, rows) for t in (base, expected, merged, spread))
        bound = roundings * u * (w.abs() + abs(factor) * (e - w).abs() + m.abs() + abs(factor) * s) + floor
        if not bool(((m - w) - factor * (e - w)).abs().le(bound).all()):
            fits = False
            break
    if not fits:
        return Judgement("differs", factor, **figures)
    # How far the estimate itself can be off: the bound measured against the delta it scales.
    spread_of_factor = math.sqrt(bound2 / norm2)
    if abs(factor - 2.0) <= max(2 * spread_of_factor, 1e-3):
        return Judgement("twice", factor, **figures)
    return Judgement("scaled", factor, **figures)


def equal_within_cast(reference: Any, merged: Any) -> tuple[bool, float]:
    """Whether `merged` is `reference` itself (same dtype: bit for bit) or its round-to-nearest cast
    (other dtypes: within u·|reference| of the coarser dtype, plus its subnormal step); and the max
    absolute difference."""
    import torch

    if tuple(reference.shape) != tuple(merged.shape):
        return False, math.inf
    if reference.dtype == merged.dtype or not (reference.is_floating_point() and merged.is_floating_point()):
        if reference.dtype != merged.dtype:
            same = bool(torch.equal(reference.to(merged.dtype), merged))
        else:
            same = bool(torch.equal(reference, merged)) or _same_nan(reference, merged)
        return same, 0.0 if same else _max_diff(reference, merged)
    low = coarsest(reference.dtype, merged.dtype)
    u, floor = unit_roundoff(low), subnormal_step(low)
    worst, ok = 0.0, True
    for rows in _row_chunks(tuple(reference.shape)):
        r, m = _part(reference, rows), _part(merged, rows)
        diff = (m - r).abs()
        ok = ok and bool((diff <= u * r.abs() + floor).all()) and bool(torch.isfinite(m).all() == torch.isfinite(r).all())
        if diff.numel():
            worst = max(worst, float(diff.max()))
    return ok, worst


def _same_nan(a: Any, b: Any) -> bool:
    import torch

    return a.is_floating_point() and bool(torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))) \
        and bool(torch.equal(torch.isnan(a), torch.isnan(b)))


def _max_diff(a: Any, b: Any) -> float:
    try:
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    except RuntimeError:
        return math.inf


def known_factor(factor: float, rank: Optional[int], scaling: Optional[float], rslora: bool) -> Optional[str]:
    """What a wrong scale is most likely to come from, or None when no common mistake explains it."""
    candidates: list[tuple[float, str]] = []
    if rank:
        if rslora:
            candidates.append((1 / math.sqrt(rank),
                               "an rsLoRA adapter merged with lora_alpha/r instead of lora_alpha/sqrt(r)"))
        else:
            candidates.append((math.sqrt(rank), "merged with rsLoRA's lora_alpha/sqrt(r) instead of lora_alpha/r"))
    if scaling:
        candidates.append((1 / scaling, "merged without the scaling (B·A alone)"))
        candidates.append((scaling, "the scaling applied twice"))
    candidates.append((-1.0, "the delta subtracted (an unmerge, or the sign flipped)"))
    best: Optional[tuple[float, str]] = min(candidates, key=lambda c: abs(factor - c[0]) / abs(c[0]), default=None)
    if best is not None and abs(factor - best[0]) <= 1e-2 * abs(best[0]):
        return best[1]
    return None

