"""Judge a merged model made by any tool against base + adapter, tensor by tensor, in bounded memory.

Every tensor of the base, of the adapter's modules_to_save copies and of the merged model is read
one at a time through safetensors' safe_open (large ones in row slices). Each weight the adapter
targets must equal base + the adapter's delta computed by peft (layerwise.py) within the dtypes'
rounding (judge.py), and its layer must compute base + adapter on a seeded probe; every other tensor
must equal the base (bit for bit, or its cast) or, for modules_to_save, the adapter's copy. Tied
names count through the tie: when the merged config keeps tie_word_embeddings, an absent lm_head is
whatever the embedding holds, which is what a reload computes. The same walk verifies verify's own
streamed merge of a base too large to load, and with no merged directory at all it merges each
targeted module on the fly, as the stream would, and judges that.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from peftdoctor.merge import plan as P
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding
from peftdoctor.rules.registry import rule
from peftdoctor.verification import judge as J
from peftdoctor.verification.layerwise import LayerParity, Reference, output_parity, reference
from peftdoctor.verification.result import Parity

Say = Callable[[str], None]
_IGNORED = ("not found in the base model", "Target modules")


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerParity] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    merged_dtype: Optional[str] = None

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def parity(self) -> Optional[Parity]:
        """The layer-wise probe as one figure: the module nearest to (or furthest past) its bound."""
        if not self.layers:
            return None
        worst = max(self.layers, key=lambda p: (not p.passed, p.max_rel / p.tolerance if p.tolerance else p.max_rel))
        rows = sum(p.rows for p in self.layers)
        return Parity(f"layer-wise merged vs adapted ({len(self.layers)} modules, worst {worst.module})",
                      worst.max_abs, worst.max_rel, sum(p.agree for p in self.layers) / rows if rows else 1.0,
                      worst.tolerance, all(p.passed for p in self.layers))

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c.get('target', 0)} targeted tensors ({c.get('target ok', 0)} right)",
                 f"{c.get('same', 0)} untouched tensors ({c.get('same ok', 0)} equal the base)"]
        if c.get("copy"):
            parts.append(f"{c['copy']} modules_to_save copies ({c.get('copy ok', 0)} right)")
        return ", ".join(parts)


class Tensors:
    """The tensors of a safetensors checkpoint by model parameter name, read one at a time."""

    def __init__(self, layout: P.BaseLayout, canonical: Callable[[str], str], stack: ExitStack) -> None:
        from safetensors import safe_open

        self.where: dict[str, tuple[Any, str, Any]] = {}
        for shard in layout.shards:
            handle = stack.enter_context(safe_open(str(shard.path), framework="pt"))
            for info in shard.tensors:
                self.where[canonical(info.name)] = (handle, info.name, info)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return sorted(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name][2].shape)

    def dtype(self, name: str) -> str:
        return str(self.where[name][2].dtype)

    def read(self, name: str) -> Any:
        handle, stored, _ = self.where[name]
        return handle.get_tensor(stored)

    def rows(self, name: str, rows: slice) -> Any:
        handle, stored, info = self.where[name]
        if not info.shape:
            return handle.get_tensor(stored)
        return handle.get_slice(stored)[rows]


def canonical_names(skeleton: Any) -> Callable[[str], str]:
    """Checkpoint name -> the model's parameter name (old checkpoints such as gpt2's omit the prefix)."""
    if skeleton.model is None or not skeleton.prefix:
        return lambda name: name
    known = {n for n, _ in skeleton.model.named_parameters(remove_duplicate=False)}
    known |= {n for n, _ in skeleton.model.named_buffers(remove_duplicate=False)}
    prefix = skeleton.prefix + "."

    def canonical(name: str) -> str:
        return name if name in known or prefix + name not in known else prefix + name
    return canonical


def judge(adapter: Adapter, base: Base, merged: Optional[Base], say: Say, *, trust_remote_code: bool) -> Outcome:
    """Compare `merged` (a directory, or None: merge each targeted module on the fly) with base + adapter."""
    from safetensors.torch import load_file

    from peftdoctor.merge.layer import load_skeleton, peft_config

    outcome = Outcome()
    base_layout = P.read_layout(base)
    merged_layout = P.read_layout(merged) if merged is not None else None
    say("reading the base's structure")
    skeleton = load_skeleton(base_layout.directory, adapter.task_type, trust_remote_code=trust_remote_code)
    if skeleton.note:
        outcome.notes.append(skeleton.note)
    canonical = canonical_names(skeleton)
    config = peft_config(adapter.directory)
    plan = P.adapter_plan(adapter)
    saved = load_file(str(adapter.directory / P.SAFETENSORS_NAME))
    with ExitStack() as stack:
        walk = _Walk(adapter, skeleton, config, plan, saved, canonical, outcome, say,
                     Tensors(base_layout, canonical, stack),
                     Tensors(merged_layout, canonical, stack) if merged_layout is not None else None,
                     merged.tie_word_embeddings is not False if merged is not None else True)
        walk.run()
    return outcome


class _Walk:
    def __init__(self, adapter: Adapter, skeleton: Any, config: Any, plan: P.AdapterPlan, saved: dict[str, Any],
                 canonical: Callable[[str], str], outcome: Outcome, say: Say, base: Tensors,
                 merged: Optional[Tensors], ties: bool) -> None:
        self.adapter, self.skeleton, self.config, self.plan, self.saved = adapter, skeleton, config, plan, saved
        self.out, self.say, self.base, self.merged, self.ties = outcome, say, base, merged, ties
        self.canonical = canonical
        self.rslora = bool(getattr(config, "use_rslora", False))
        self.groups = [tuple(g) for g in skeleton.tied]
        self.targets: dict[str, tuple[str, str]] = {}  # tensor -> (module, param)
        for module in plan.lora:
            self.targets[f"{module}.weight"] = (module, "weight")
            if adapter.config.get("lora_bias") and f"{module}.bias" in base:
                self.targets[f"{module}.bias"] = (module, "bias")
        self.copies = {canonical(n): k for n, k in plan.copies.items()}

    def group(self, name: str) -> tuple[str, ...]:
        return next((g for g in self.groups if name in g), (name,))

    def base_source(self, name: str) -> Optional[str]:
        return next((n for n in self.group(name) if n in self.base), None)

    def merged_source(self, name: str) -> tuple[Optional[str], bool]:
        """Where the merged model's value of `name` comes from, and whether only through a tie."""
        assert self.merged is not None
        if name in self.merged:
            return name, False
        if self.ties:
            partner = next((n for n in self.group(name) if n in self.merged), None)
            if partner is not None:
                return partner, True
        return None, False

    def expected_names(self) -> list[str]:
        names = set(self.base.names()) | set(self.targets) | set(self.copies)
        touched = {n for n in names if n in self.targets or n in self.copies}
        for group in self.groups:
            if touched & set(group):
                names |= {n for n in group if self.base_source(n) is not None}
        if self.merged is not None:
            for name in self.merged.names():
                if name not in names and any(n in names for n in self.group(name)):
                    names.add(name)  # a tied name the merged model writes out: judged like its partner
        return sorted(names)

    def run(self) -> None:
        expected = self.expected_names()
        if self.merged is not None:
            extra = [n for n in self.merged.names() if n not in expected]
            for name in extra:
                self.out.findings.append(rule("PD319").finding(
                    f"{name}: in the merged model but not in the base nor the adapter",
                    "remove it, or check that --base is the model this merge was made from", key=name))
            floats = [self.merged.dtype(n) for n in self.merged.names() if self.merged.dtype(n) in P.FLOAT_DTYPES]
            if floats:
                self.out.merged_dtype = P.FLOAT_DTYPES[max(set(floats), key=floats.count)]
        modules_done: set[str] = set()
        below = 0
        for name in expected:
            if name in self.targets:
                module = self.targets[name][0]
                if module in modules_done:
                    continue
                modules_done.add(module)
                below += self._module(module)
            elif name in self.copies:
                self._copy(name)
            elif self.merged is not None:
                self._same(name)
        if below:
            self.out.findings.append(rule("PD312").finding(
                f"in {below} targeted tensor(s) the adapter's delta is smaller than the merged dtype's rounding: "
                "there the merge cannot be told apart from the base", "judge a float32 merge to see the delta"))

    # ------------------------------------------------------------------ targeted modules

    def _module(self, module: str) -> int:
        names = {p: n for n, (m, p) in self.targets.items() if m == module}
        sources = {p: self.base_source(n) for p, n in names.items()}
        if sources.get("weight") is None:
            self._missing(names["weight"], "the base has no such tensor (is --base the model the adapter was trained on?)")
            return 0
        params = {p: self.base.read(s) for p, s in sources.items() if s is not None}
        bias = self.base_source(f"{module}.bias")
        if "bias" not in params and bias is not None:  # not judged, but the probe runs the layer with it
            params["bias"] = self.base.read(bias)
        base_dtype = params["weight"].dtype
        params, tensors = P.module_inputs(module, params, self.saved)
        self.say(f"judging {module}")
        try:
            ref = reference(self.skeleton, self.config, module, params, tensors)
        except ValueError as exc:
            if any(text in str(exc) for text in _IGNORED):  # peft builds no layer here: it stays the base
                self.out.notes.append(f"peft builds no layer for {module} (not matched by target_modules): "
                                      "its saved LoRA weights are ignored, as peft ignores them")
                for name in names.values():
                    self._same(name) if self.merged is not None else None
                return 0
            raise
        merged: dict[str, Any] = {}
        via_tie: dict[str, str] = {}
        for param, name in names.items():
            self.out.count("target")
            value, tie = self._merged_value(name, module, params, tensors)
            if value is None:
                continue
            if tie:
                via_tie[param] = tie
            merged[param] = value
        below = 0
        bounds: dict[str, Any] = {}
        for param, value in merged.items():
            low = J.coarsest(base_dtype, value.dtype)
            roundings = (ref.rank or 1) + 2 + (J.DORA_ROUNDINGS if ref.dora else 0)
            spread = ref.spread if param == "weight" else (ref.expected[param] - ref.start[param]).abs()
            verdict = J.judge_merge(ref.start[param], ref.expected[param], value, spread, J.unit_roundoff(low),
                                    roundings, J.subnormal_step(low))
            if verdict.outcome == "ok":
                self.out.count("target ok")
                below += verdict.below_rounding
                if param == "weight":
                    bounds["weight"] = roundings * J.unit_roundoff(low) * (
                        ref.start[param].abs() + ref.expected[param].abs() + value.float().abs() + spread)
            else:
                self._wrong(names[param], verdict, ref, via_tie.get(param))
        if "weight" in merged and tuple(merged["weight"].shape) == tuple(ref.expected["weight"].shape):
            if "weight" not in bounds:
                low = J.coarsest(base_dtype, merged["weight"].dtype)
                roundings = (ref.rank or 1) + 2 + (J.DORA_ROUNDINGS if ref.dora else 0)
                bounds["weight"] = roundings * J.unit_roundoff(low) * (
                    ref.start["weight"].abs() + ref.expected["weight"].abs() + merged["weight"].float().abs()
                    + ref.spread)
            parity = output_parity(ref, merged, bounds["weight"])
            if parity is not None:
                self.out.layers.append(parity)
        return below

    def _merged_value(self, name: str, module: str, params: dict[str, Any],
                      tensors: dict[str, Any]) -> tuple[Optional[Any], Optional[str]]:
        if self.merged is None:  # on the fly: what the streaming merge writes, in the base's dtype
            from peftdoctor.merge.layer import merge_module

            done = merge_module(self.skeleton, self.config, module, {n: t.clone() for n, t in params.items()},
                                tensors, "cpu")
            return done[self.targets[name][1]], None
        source, tie = self.merged_source(name)
        if source is None:
            self._missing(name, "the merged model has no such tensor")
            return None, None
        return self.merged.read(source), (source if tie else None)

    def _wrong(self, name: str, verdict: J.Judgement, ref: Reference, tie: Optional[str]) -> None:
        through = (f" (the merged config ties it to {tie}: a reload shares that matrix, so the adapter's change "
                   f"to one of them is lost or lands in both)") if tie else ""
        size = f"max |delta| {verdict.max_delta:.3g}"
        fix = ("merge again with peft's own scaling, e.g. `peftdoctor merge ADAPTER --base BASE --out DIR` "
               "(rsLoRA, rank_pattern/alpha_pattern and DoRA included)")
        if verdict.outcome == "shape":
            self.out.findings.append(rule("PD320").finding(
                f"{name}: shape differs from base + adapter{through}", "merge into the base this adapter was trained "
                "on (a resized vocabulary comes with the adapter's saved embedding)", key=name))
        elif verdict.outcome == "missing":
            self.out.findings.append(rule("PD313").finding(
                f"{name}: equals the base: the adapter's delta ({size}) was never applied{through}",
                "the merging tool skipped this module; " + fix, key=name))
        elif verdict.outcome == "twice":
            self.out.findings.append(rule("PD315").finding(
                f"{name}: holds the adapter's delta {verdict.factor:.4g} times ({size}): merged twice{through}",
                "merge into an unmerged copy of the base, once; " + fix, key=name))
        elif verdict.outcome == "scaled":
            cause = J.known_factor(verdict.factor, ref.rank, ref.scaling, self.rslora)
            self.out.findings.append(rule("PD314").finding(
                f"{name}: holds the adapter's delta at {verdict.factor:.4g} times its scale ({size}, scaling "
                f"{ref.scaling:.4g}, r={ref.rank})" + (f": {cause}" if cause else "") + through, fix, key=name))
        else:
            self.out.findings.append(rule("PD316").finding(
                f"{name}: differs from base + delta by up to {verdict.max_error:.3g} (rounding allows "
                f"{verdict.max_bound:.3g}; {size}), and not as a multiple of the delta (best fit "
                f"{verdict.factor:.3g} times){through}", "merge from this adapter and this base; " + fix, key=name))

    # ------------------------------------------------------------------ everything else

    def _copy(self, name: str) -> None:
        """A modules_to_save copy: peft loads it into a clone of the base module, so it takes the base's dtype."""
        self.out.count("copy")
        if self.merged is None:
            self.out.count("copy ok")
            return
        source, tie = self.merged_source(name)
        if source is None:
            self._missing(name, "the merged model has no such tensor (the adapter saves it in modules_to_save)")
            return
        trained = self.saved[self.copies[name]]
        value = self.merged.read(source)
        same, worst = J.equal_within_cast(trained, value)
        if same:
            self.out.count("copy ok")
            return
        base_source = self.base_source(name)
        still_base = base_source is not None and J.equal_within_cast(self.base.read(base_source), value)[0]
        what = "still holds the base's values" if still_base else f"differs from it by up to {worst:.3g}"
        self.out.findings.append(rule("PD321").finding(
            f"{name}: the adapter saves this module whole (modules_to_save); the merged model {what}"
            + (f" (through its tie to {source})" if tie else ""),
            "copy the adapter's saved module into the merged model (peft's merge_and_unload does)", key=name))

    def _same(self, name: str) -> None:
        assert self.merged is not None
        self.out.count("same")
        source = self.base_source(name)
        merged_source, tie = self.merged_source(name)
        if merged_source is None:
            self._missing(name, "the merged model has no such tensor")
            return
        if source is None:
            return
        if self.base.shape(source) != self.merged.shape(merged_source):
            self.out.findings.append(rule("PD320").finding(
                f"{name}: shape {list(self.merged.shape(merged_source))} in the merged model, "
                f"{list(self.base.shape(source))} in the base", "merge into the base this adapter was trained on",
                key=name))
            return
        same, worst = True, 0.0
        for rows in J._row_chunks(self.base.shape(source)):
            ok, diff = J.equal_within_cast(self.base.rows(source, rows), self.merged.rows(merged_source, rows))
            same, worst = same and ok, max(worst, diff)
        if same:
            self.out.count("same ok")
            return
        adapted = next((n for n in self.group(name) if n != name and (n in self.targets or n in self.copies)), None)
        self.out.findings.append(rule("PD317").finding(
            f"{name}: the adapter does not change it, yet it differs from the base by up to {worst:.3g}"
            + (f" (through its tie to {merged_source}, which the adapter changes)" if tie else ""),
            f"{name} is tied to {adapted}, which the adapter changes: the merge changed both (peft's "
            "merge_and_unload on a tied model does); untie them before merging (`peftdoctor merge` does) "
            "and save with tie_word_embeddings false" if adapted is not None else
            "merge from the base this adapter was trained on; a tool changed a tensor it had no delta for", key=name))

    def _missing(self, name: str, why: str) -> None:
        self.out.findings.append(rule("PD318").finding(
            f"{name}: {why}", "save every tensor of the merged model (safetensors shards and their index)", key=name))


def merged_base(directory: Path) -> Base:
    """The merged model directory, read as a base is (config.json, safetensors shards)."""
    from peftdoctor.io.base import open_base

    return open_base(str(directory))
