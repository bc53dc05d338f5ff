"""Validate adapter_config.json against the target release's generated schema (PD102-PD104, PD116), and its
regexes against Python's re as that release builds them (PD118)."""
from __future__ import annotations

import functools
import json
import math
from typing import TYPE_CHECKING, Any, Callable

from peftdoctor.errors import clip
from peftdoctor.model.findings import Finding, Severity
from peftdoctor.peft import postinit, releases, targeting
from peftdoctor.peft.releases import Release
from peftdoctor.rules import Context
from peftdoctor.rules.registry import rule
from peftdoctor.rules.weights import lora_modules, saved_ranks

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

# Importing jsonschema costs ~45 ms, a third of check's whole start-up budget, while nearly every
# config is valid. So a plain look at each value's JSON type decides whether jsonschema runs at all:
# any keyword the look does not understand, or any doubt, sends the config to jsonschema, which
# alone produces findings.
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_UNDERSTOOD = frozenset({"type", "enum", "items", "anyOf", "default", "title", "description"})


def plainly_valid(value: Any, prop: dict[str, Any]) -> bool:
    """True only when `value` certainly satisfies `prop`; False means 'ask jsonschema'."""
    if not set(prop) <= _UNDERSTOOD:
        return False
    if "anyOf" in prop and not any(plainly_valid(value, sub) for sub in prop["anyOf"]):
        return False
    if "enum" in prop and not any(type(value) is type(e) and value == e for e in prop["enum"]):
        return False
    if "type" in prop:
        kinds = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        if not any(_JSON_TYPES[k](value) for k in kinds if k in _JSON_TYPES):
            return False
    if "items" in prop and isinstance(value, list):
        return all(plainly_valid(item, prop["items"]) for item in value)
    return True


@functools.lru_cache(maxsize=None)
def _validator(release: Release) -> "Draft202012Validator":
    from jsonschema import Draft202012Validator

    return Draft202012Validator(release.schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


_ENCODINGS = {"utf-8-sig": "UTF-8 with a byte-order mark"}  # else "utf-16", "utf-16-be", "utf-32-le"...
# Keys whose value scales the adapter's output (lora_alpha / r), per module in alpha_pattern.
_SCALING_KEYS = ("lora_alpha", "alpha_pattern")


def encoding_findings(ctx: Context) -> list[Finding]:
    """PD119: the file is JSON by RFC 8259's rules (a byte-order mark, UTF-16/32) but not as peft reads it."""
    error, encoding = ctx.adapter.config_peft_error, ctx.adapter.config_encoding or ""
    if error is None:
        return []
    return [rule("PD119").finding(
        f"adapter_config.json is {_ENCODINGS.get(encoding) or encoding.upper() + ' text'}: "
        f"every peft release opens it as UTF-8 text and json.load fails ({clip(error, 120)})",
        "save adapter_config.json as UTF-8 without a byte-order mark", file="adapter_config.json")]


def peft_type_findings(ctx: Context) -> list[Finding]:
    config, target = ctx.config, ctx.target
    if "peft_type" not in config:
        return [rule("PD102").finding("adapter_config.json has no peft_type, so peft cannot pick a config class",
                                      'add "peft_type" (for example "LORA") as saved by the training run',
                                      key="peft_type")]
    value = config["peft_type"]
    if isinstance(value, str) and value in target.peft_types:
        return []
    knowing = [r.name for r in releases.all_releases() if isinstance(value, str) and value in r.peft_types]
    if knowing:
        fix = f"install peft>={knowing[0]}, which knows {value}"
    else:
        fix = f"use one of the peft types peft knows: {', '.join(sorted(releases.all_releases()[-1].peft_types))}"
    return [rule("PD103").finding(f"peft {target.name} knows no peft_type {value!r}", fix, key="peft_type")]


def value_findings(ctx: Context) -> list[Finding]:
    """Type and enum errors; unknown keys are left to unknown_keys, which can explain them."""
    if ctx.peft_type not in ctx.target.peft_types:
        return []
    refused = post_init_findings(ctx) + non_finite_findings(ctx)
    props = ctx.target.fields(ctx.peft_type or "")
    if all(plainly_valid(value, props[key]) for key, value in ctx.config.items() if key in props):
        return refused
    findings = refused
    for error in sorted(_validator(ctx.target).iter_errors(ctx.config), key=lambda e: [str(p) for p in
                                                                                      e.absolute_path]):
        if error.validator in ("additionalProperties", "required") or not error.absolute_path:
            continue
        key = ".".join(str(p) for p in error.absolute_path)
        if any(f.key == key.split(".")[0] for f in refused):
            continue  # the release's own error, or what it computes, says more than the annotation
        if key == "task_type":
            findings.append(_task_type_finding(ctx))
            continue
        findings.append(rule("PD104").finding(
            f"{key}: {_short(error)} (peft {ctx.target.name}, {ctx.target.config_class(ctx.peft_type or '')})"
            + (": the annotation says int, but dataclasses do not enforce it and peft only computes with it"
               if _float_for_int(error) else ""),
            _fix_for(key, error), key=key, severity=Severity.WARNING if _float_for_int(error) else None))
    return findings


def non_finite_findings(ctx: Context) -> list[Finding]:
    """PD120: Python's json reads NaN and Infinity (JSON itself has no such numbers) and no release refuses
    them as an adapter's scale: the scaling alpha/r is not finite and every adapted layer outputs NaN
    (measured in tests/test_weights_by_release.py)."""
    known = ctx.target.fields(ctx.peft_type or "")
    found = []
    for key in (k for k in _SCALING_KEYS if k in known):
        value = ctx.config.get(key)
        named = [(f"{key}[{k!r}]", v) for k, v in value.items()] if isinstance(value, dict) else [(key, value)]
        bad = [f"{name}={json.dumps(v)}" for name, v in named if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            found.append(rule("PD120").finding(
                f"{clip(', '.join(bad), 120)}: peft {ctx.target.name} loads it without a word, the "
                "LoRA scaling alpha/r is not finite and every output of the adapted layers is NaN",
                f"set {key} to the finite value the adapter was trained with", key=key))
    return found


def post_init_findings(ctx: Context) -> list[Finding]:
    """PD104 for what the target release refuses once its config class (or the model it builds) has the values:
    the post-init rules measured from each release (peft/postinit.py), the compatibility table's own."""
    refusing = postinit.refusing_rule(ctx.target, ctx.peft_type or "", ctx.config)
    if refusing is None:
        return []
    keys = sorted({clause["key"] for clause in refusing["when"]})
    shown = ", ".join(f"{k}={json.dumps(ctx.config[k]) if k in ctx.config else '(absent)'}" for k in keys)
    where = "its config class is built" if refusing["stage"] == "config" else "the adapter's layers are built"
    fix = f"correct {' and '.join(keys)} to what peft {ctx.target.name} accepts"
    if keys == ["r"] and ctx.peft_type == "LORA" and saved_ranks(lora_modules(ctx.adapter)):
        fix = f"set r to {saved_ranks(lora_modules(ctx.adapter))[0]}, the rank the saved weights hold"
    return [rule("PD104").finding(
        f"{clip(shown, 160)}: peft {ctx.target.name} refuses it when {where}: "
        f"{clip(postinit.fill(refusing, ctx.config), 200)}", fix, key=keys[0])]


def _task_type_finding(ctx: Context) -> Finding:
    probe = ctx.target.info.get("unknown_task_type") or {}
    raises = probe.get("result") == "raise"
    consequence = "loading fails" if raises else "PeftModel falls back to the generic model class"
    return rule("PD116").finding(
        f"peft {ctx.target.name} does not know task_type {ctx.config.get('task_type')!r}: {consequence}",
        f"use one of: {', '.join(str(t) for t in ctx.target.info.get('task_types', ()))}",
        key="task_type", severity=Severity.ERROR if raises else None)


def _float_for_int(error: "ValidationError") -> bool:
    """A float where an int is annotated (e.g. lora_alpha 45.25 after folding rsLoRA) still loads and
    computes exactly; it is worth a warning, not an error."""
    expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    return error.validator == "type" and "integer" in expected and isinstance(error.instance, float)


def _short(error: "ValidationError") -> str:
    return clip(error.message, 160)


def _fix_for(key: str, error: "ValidationError") -> str:
    expected: Any = error.validator_value
    if error.validator == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        return f"make {key} a JSON {' or '.join(kinds)}"
    if error.validator == "enum":
        return f"use one of {expected!r} for {key}"
    return f"correct {key} to what the config class accepts"


def pattern_findings(ctx: Context) -> list[Finding]:
    """PD118, one per config key: the regexes peft builds from it that `re` refuses; peft fails the load."""
    by_key: dict[str, list[tuple[str, str]]] = {}
    known = ctx.target.fields(ctx.peft_type) if ctx.peft_type in ctx.target.peft_types else ()
    for key, value, message in targeting.pattern_errors(ctx.config, ctx.target.version, known):
        by_key.setdefault(key, []).append((value, message))
    findings = []
    for key, bad in by_key.items():
        value, message = bad[0]
        what = f"{key} key" if key in ("rank_pattern", "alpha_pattern") else key
        more = f" (and {len(bad) - 1:,} more)" if len(bad) > 1 else ""
        findings.append(rule("PD118").finding(
            f"{what} {clip(value, 80)!r}{more} is not a regex Python's re accepts ({message}): peft "
            f"{ctx.target.name} raises re.error while it builds the adapter's layers",
            "escape the regex characters (re.escape) or name the modules as a list of plain names", key=key))
    return findings

