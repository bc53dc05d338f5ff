"""Keys the target release does not know: will loading fail, drop meaning, or drop a no-op?"""
from __future__ import annotations

import difflib
import json
import reprlib
from typing import Any

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
    return [_finding(ctx, key) for key in ctx.config if key not in known]


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
    return text if len(text) <= 60 else text[:57] + "..."
