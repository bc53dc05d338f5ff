"""Meaning-bearing traps that loading does not catch (PD110-PD115)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

from packaging.version import Version

from peftdoctor.io.base import REPO_ID
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding, Severity
from peftdoctor.peft import compat, releases, targeting
from peftdoctor.peft import semantics as keys
from peftdoctor.rules import Context
from peftdoctor.rules.registry import rule

if TYPE_CHECKING:
    from peftdoctor.peft.architectures import Architecture


def version_findings(ctx: Context) -> list[Finding]:
    raw = ctx.config.get("peft_version")
    if raw is not None and releases.parse_version(raw) is None:
        return [rule("PD111").finding(f"peft_version {raw!r} is not a version", "remove peft_version or set it to "
                                      "the peft release that saved the adapter", key="peft_version")]
    written = compat.written_by(ctx.config)
    exact = written.exact if written is not None else None
    if exact is not None and exact > ctx.target.version:
        return [rule("PD110").finding(f"written by peft {written}, newer than the target peft {ctx.target.name}",
                                      f"install peft>={exact.base_version}, or run `peftdoctor fix "
                                      f"--peft {ctx.target.name}`", key="peft_version")]
    return []


def base_mutating_init(ctx: Context) -> list[Finding]:
    value = ctx.config.get("init_lora_weights")
    if not isinstance(value, str) or not value.lower().startswith(keys.BASE_MUTATING_INITS):
        return []
    return [rule("PD112").finding(
        f"init_lora_weights={value!r} rewrites the base weights when the adapter is created, and this adapter "
        "was saved unconverted: on the original base it computes something else",
        "re-save with save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain LoRA "
        "that applies to the original base", key="init_lora_weights")]




def base_not_portable(ctx: Context) -> list[Finding]:
    value = ctx.config.get("base_model_name_or_path")
    fix = "set base_model_name_or_path to the base's hub repo id"
    if value is None or value == "":
        return [rule("PD113").finding("base_model_name_or_path is empty: nothing tells a loader which base to use",
                                      fix, key="base_model_name_or_path")]
    if not isinstance(value, str):
        return []
    if value.startswith(("/", "~", "./", "../", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value) \
            or not REPO_ID.match(value):
        return [rule("PD113").finding(f"base_model_name_or_path {value!r} is a machine-local path, "
                                      "so the adapter does not load elsewhere", fix, key="base_model_name_or_path")]
    return []


def oft_weights_changed(ctx: Context) -> list[Finding]:
    for peft_type, missing_key, since, _error in keys.LOAD_REFUSALS:
        if ctx.peft_type == peft_type and missing_key not in ctx.config:
            fails = ctx.target.version >= Version(since)
            outcome = f"peft {ctx.target.name} refuses to load it" if fails else f"peft>={since} refuses it"
            return [rule("PD114").finding(
                f"{peft_type} adapter without {missing_key}: saved before peft 0.14.0 changed OFT; {outcome}",
                "retrain with peft>=0.14.0, or pin peft<0.14.0 where this adapter is used", key=missing_key,
                severity=None if fails else Severity.WARNING)]
    return []


def tied_layer_adapted(ctx: Context) -> list[Finding]:
    if ctx.config.get("ensure_weight_tying") is True:
        return []
    base = ctx.base
    arch = _architecture(base)
    tied_names = set(keys.TIED_MODULE_NAMES)
    if arch is not None:  # this architecture's own embedding and LM head (the generated tables)
        tied_names |= {n.rsplit(".", 1)[-1] for n in (arch.input_embeddings, arch.output_embeddings) if n}
    adapted = (targeting.declared_names(ctx.config) or frozenset()) | \
        (targeting.declared_names(ctx.config, "modules_to_save") or frozenset())
    tied = sorted(adapted & tied_names)
    if not tied:
        return []
    ties = base.tie_word_embeddings if base is not None else None
    if ties is None and arch is not None:
        ties = arch.ties_by_default  # config.json is silent: the config class's default decides
    if ties is False:
        return []
    known = "the base sets tie_word_embeddings" if ties else "if the base ties them (most do),"
    return [rule("PD115").finding(
        f"{', '.join(tied)} adapted: {known} the input embedding and LM head share one matrix, and a merged "
        "model re-tied on reload throws one trained copy away",
        "set tie_word_embeddings false in the merged model's config (peftdoctor verify does), or train with "
        "ensure_weight_tying=true", key="target_modules")]


def _architecture(base: Optional[Base]) -> Optional[Architecture]:
    if base is None or base.model_type is None:
        return None
    from peftdoctor.peft import architectures  # only with a base at hand: the table is not free to load

    return architectures.for_config(base.config)


def all_linear_unknown(ctx: Context) -> list[Finding]:
    """PD121: before 0.8.0 "all-linear" is a regex that no module name fullmatches, so peft raises."""
    targets = ctx.config.get("target_modules")
    if not targeting.names_all_linear(targets) or targeting.is_all_linear(targets, ctx.target.version):
        return []
    return [rule("PD121").finding(
        f"target_modules {targets!r} is the all-linear shorthand only from peft 0.8.0; peft {ctx.target.name} takes it "
        f"as a module name and raises \"{compat.NOT_FOUND.format(targets=targets)}\"",
        "list the linear modules' names in target_modules, or use peft>=0.8.0", key="target_modules")]
