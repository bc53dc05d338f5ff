"""Keys the target release does not know: will loading fail, drop meaning, or drop a no-op?"""
from __future__ import annotations

import difflib
import json
import reprlib
from typing import Any

from peftdoctor.errors import clip
from peftdoctor.model.findings import Finding
from peftdoctor.peft import compat
from peftdoctor.peft import semantics as keys
from peftdoctor.rules import Context
from peftdoctor.rules.registry import rule


def unknown_key_findings(ctx: Context) -> list[Finding]:
    peft_type, target = ctx.peft_type, ctx.target
    if peft_type is None or peft_type not in target.peft_types:
        return []
    known = target.fields(peft_type)
    unknown = [key for key in ctx.config if key not in known]
    noops = {key: reason for key in unknown if (reason := compat.noop_reason(ctx.config, key)) and _groups(ctx, key)}
    if len(noops) < 2:
        noops = {}  # one key is said best on its own
    findings = [_finding(ctx, key) for key in unknown if key not in noops]
    return ([_noops_finding(ctx, noops)] if noops else []) + findings


def _groups(ctx: Context, key: str) -> bool:
    """Whether a no-op key goes into the one finding for all no-op keys: everything a raising release
    trips on, and elsewhere the keys of newer releases (legacy keys and typos keep their own warning)."""
    span = compat.history(ctx.peft_type, key)
    return ctx.target.unknown_keys == "raise" or (span.known and not span.legacy)


def _noops_finding(ctx: Context, noops: dict[str, str]) -> Finding:
    """One finding for many no-op keys, so that the keys which bear meaning stand out."""
    name = ctx.target.name
    keys_ = ", ".join(sorted(noops))
    why = "; ".join(f"{key}: {reason}" for key, reason in sorted(noops.items()))
    fix = f"`peftdoctor fix --peft {name}` drops them ({why})"
    if ctx.target.unknown_keys == "raise":  # loading fails until they are dropped: still an error
        return rule("PD105").finding(f"{len(noops)} keys unknown to peft {name} are no-ops, but peft {name} "
                                     f"raises on them: loading fails ({keys_})", fix)
    return rule("PD107").finding(f"{len(noops)} keys unknown to peft {name} are no-ops; it drops them "
                                 f"safely ({keys_})", fix)


def _finding(ctx: Context, key: str) -> Finding:
    target, config = ctx.target, ctx.config
    span = compat.history(ctx.peft_type, key)
    noop = compat.noop_reason(config, key)
    value = _show(config[key])
    if span.legacy:
        origin = f"a legacy key (last known to peft {span.last})"
    elif span.known:
        origin = f"introduced in peft {span.first}"
    else:
        origin = "known to no peft release"
    if noop:
        fix = f"drop it: {value} is a no-op ({noop}); `peftdoctor fix` does this safely"
    elif span.known and not span.legacy:
        fix = f"install peft>={span.first}; dropping it would change the adapter: {_loss(key)}"
    else:
        fix = f"remove it only if {value} is not needed: {_loss(key)}"
    if target.unknown_keys == "raise":
        return rule("PD105").finding(
            f"peft {target.name} raises on {key}={value} ({origin}): loading fails", fix, key=key)
    if span.legacy:
        return rule("PD108").finding(f"{key}={value} is {origin}; peft {target.name} ignores it", fix, key=key)
    if not span.known:
        return rule("PD109").finding(f"{key} is {origin}{_did_you_mean(ctx, key)}; peft {target.name} ignores it",
                                     fix, key=key)
    if noop:
        return rule("PD107").finding(f"peft {target.name} drops {key}={value} ({origin}); it is a no-op: {noop}",
                                     fix, key=key)
    return rule("PD106").finding(
        f"peft {target.name} silently drops {key}={value} ({origin}): {_loss(key)}", fix, key=key)


def _loss(key: str) -> str:
    return keys.LOSS_IF_DROPPED.get(key, keys.DEFAULT_LOSS)


def _did_you_mean(ctx: Context, key: str) -> str:
    close = difflib.get_close_matches(key, list(ctx.target.fields(ctx.peft_type or "")), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (RecursionError, ValueError):  # nested deeper than the stack allows, or an int too long to print
        text = reprlib.repr(value)
    return clip(text, 60)
