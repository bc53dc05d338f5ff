"""The adapter as the judged release applies it (peft/application.py): PD223 tensors dropped on load, PD208
tensors of modules no layer is built for, PD207 adapted modules that get no weights.

With a base (its config.json, or the module tree of the family base_model_name_or_path names) each module is
judged; without one, PD207 compares the target_modules entries with the saved modules, as it always did.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from peftdoctor.model.findings import Finding
from peftdoctor.peft import application, architectures, releases, targeting
from peftdoctor.peft.application import Application, Placement, Tree, short
from peftdoctor.peft.targeting import REGEX_CHARS
from peftdoctor.rules import Context
from peftdoctor.rules.registry import rule

LORA_TYPES = ("LORA",)
_PREFIX_FIX = "re-save the adapter with peft's save_pretrained(), or rename the keys to base_model.model.<module>"
_FIXES = {
    "no-prefix": _PREFIX_FIX, "doubled-prefix": _PREFIX_FIX,
    "adapter-name": "re-save with save_pretrained(), or drop the adapter name from the keys (lora_A.default.weight "
                    "-> lora_A.weight)",
    "not-in-base": "load the adapter on the base it was trained for (base_model_name_or_path)",
    "embedding-role": "rename the embedding's lora_A.weight/lora_B.weight to lora_embedding_A/lora_embedding_B",
    "linear-role": "rename lora_embedding_A/B to lora_A/B for these layers",
    "dora-name": "load with peft>=0.12.0, or rename lora_magnitude_vector.weight to lora_magnitude_vector",
}


def tree_of(ctx: Context) -> tuple[Optional[Tree], Optional[str]]:
    """The base's module tree (from its config.json, else the family its name says) and a note on which."""
    if ctx.base is not None:
        tree = application.tree_for(ctx.base.config, "", transformers=ctx.transformers)
        if tree is None:
            return None, None
        arch = tree.arch
        return dataclasses.replace(tree, source=f"{ctx.base.display}: the modules of {arch.entry['class']} "
                                                f"({arch.model_type}) in transformers "
                                                f"{ctx.transformers or architectures.transformers_version()}"), None
    tree = application.guessed_tree(ctx.config, ctx.transformers)
    return tree, (f"weights applied against {tree.source}; pass --base for the base's own layer count and "
                  "sizes") if tree is not None else None


def lora_tensors(ctx: Context) -> Optional[tuple[dict, dict[str, int]]]:
    """The saved tensors and their sizes when the adapter is a LoRA with a readable header, else None."""
    if ctx.config.get("peft_type") not in LORA_TYPES or ctx.adapter.header is None:
        return None
    return ctx.adapter.tensors, sizes(ctx.adapter)


def application_findings(ctx: Context, tree: Optional[Tree], note: Optional[str]) -> tuple[list[Finding], list[str]]:
    """PD223/PD208/PD207 for the judged release on `tree` (tree_of), and the note saying which tree it was."""
    lora = lora_tensors(ctx)
    targets = ctx.config.get("target_modules")
    if lora is None or (targeting.names_all_linear(targets)
                        and not targeting.is_all_linear(targets, ctx.target.version)):
        return [], []  # (an all-linear this release does not know fails to load: PD121)
    done = application.apply(*lora, ctx.config, tree, ctx.target.version, ctx.transformers)
    findings = ignored_findings(done)
    findings += unweighted_findings(done) if tree is not None else _entry_findings(ctx.config, lora[0])
    return findings, [note] if note else []


def sizes(adapter: Any) -> dict[str, int]:
    return {key: math.prod(adapter.shape_of(key)) for key in adapter.tensors}


def ignored_findings(done: Application) -> list[Finding]:
    by_reason: dict[str, list[Placement]] = {}
    for placement in done.ignored:
        by_reason.setdefault(placement.ignored or "", []).append(placement)
    findings = []
    for reason, dropped in by_reason.items():
        modules = list(dict.fromkeys(p.module for p in dropped))
        where = f" ({done.tree.source})" if reason == "not-in-base" and done.tree is not None else ""
        if reason == "not-targeted":
            findings.append(rule("PD208").finding(
                f"weights for {short(modules)} match no module the config targets (target_modules, exclude_modules, "
                "layers_to_transform): peft builds no layer for them and silently ignores those weights",
                "add the module names to target_modules", key="target_modules"))
            continue
        effect = (f"the base has none of the modules they name ({short(modules)}), so nothing of them is computed"
                  if reason == "not-in-base" else
                  f"the modules they were meant for ({short(modules)}) compute the base there")
        findings.append(rule("PD223").finding(
            f"{len(dropped)} saved LoRA tensors are dropped on load without an error, {application.REASONS[reason]}"
            f"{where}: {short([p.name.key for p in dropped])}; {effect}. Applied: {done.share}", _FIXES[reason],
            file="adapter_model.safetensors"))
    return findings


def unweighted_findings(done: Application) -> list[Finding]:
    if not done.unweighted:
        return []
    what = ("init_lora_weights is false, so peft gives them random LoRA weights: the outputs change at random"
            if done.random else "their lora_B stays zero: they compute the base")
    return [rule("PD207").finding(
        f"{len(done.unweighted)} module(s) the config adapts get no weights from the file: {short(done.unweighted)} "
        f"({done.tree.source if done.tree else 'the base'}); {what}. Applied: {done.share}",
        "re-save the adapter that trained these modules, or remove them from target_modules",
        key="target_modules")]


def _entry_findings(config: dict[str, Any], tensors: dict) -> list[Finding]:
    """Without a base: target_modules entries with no saved LoRA module at all (one set lookup per plain entry:
    10,000 targets x 1,000 modules took 7 s as a double loop)."""
    targets = config.get("target_modules")
    modules = {n.module for n in tensors.values() if n.family == "lora"}
    if not modules or not isinstance(targets, list):
        return []
    newest = releases.known_versions()[-1]
    tails = {".".join(m.split(".")[i:]) for m in modules for i in range(m.count(".") + 1)}
    missing = []
    for target in (t for t in targets if isinstance(t, str)):
        known = target in tails if REGEX_CHARS.isdisjoint(target) else None
        if known is False or (known is None and not any(
                application.adapts({**config, "target_modules": [target]}, m, newest, None) for m in modules)):
            missing.append(target)
    what = ("random LoRA weights (init_lora_weights is false): the outputs change at random"
            if config.get("init_lora_weights") is False else "no LoRA weights: those modules compute the base")
    findings = [rule("PD207").finding(
        f"target_modules lists {target!r} but the weights hold no LoRA tensors for it: peft gives it {what}",
        f"remove {target!r} from target_modules, or re-save the adapter that trained it",
        key="target_modules") for target in missing[:3]]
    if len(missing) > 3:  # one more finding for the rest, not one per entry of a 100,000-entry list
        findings.append(rule("PD207").finding(
            f"{len(missing) - 3} more entries of target_modules have no LoRA tensors in the weights "
            f"({short(missing[3:])})", "remove them from target_modules", key="target_modules"))
    return findings
