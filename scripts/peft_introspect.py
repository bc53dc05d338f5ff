"""Describe the adapter_config.json that the importable peft release accepts.

Run inside a release env (see ``peft_envs.py``); uses only the stdlib and that
env's peft. Prints one JSON document: for every peft_type in
``PEFT_TYPE_TO_CONFIG_MAPPING``, the config class and a JSON Schema fragment
(type and default) per ``__init__`` field, plus how the release's own loader
treats an unknown key, an unknown peft_type and an unknown task_type, measured
by loading probe files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import re
import sys
import tempfile
import types
import typing
import warnings
from typing import Any

PROBE_KEY = "peftdoctor_probe_unknown_key"
PROBE_PEFT_TYPE = "PEFTDOCTOR_PROBE_PEFT_TYPE"
PROBE_TASK_TYPE = "PEFTDOCTOR_PROBE_TASK_TYPE"
PROBE_CLASS_KEY = "LORA"

SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}
ARRAYS = (list, tuple, set, frozenset)
OBJECTS = (dict,)


# ---------------------------------------------------------------- JSON values

class NotJSON(Exception):
    """Raised when a default has no faithful JSON form."""


def to_json(value: Any) -> Any:
    """JSON form of a default the way ``to_dict()`` + ``json.dump`` would write it."""
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(value)
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotJSON(value)
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v) for v in value), key=sort_key)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    raise NotJSON(value)


def sort_key(value: Any) -> tuple:
    """Total order for enum members and set defaults: null first, then by type and value."""
    return (value is not None, type(value).__name__, json.dumps(value, sort_keys=True))


def json_type(value: Any) -> str:
    """JSON Schema type name of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# ------------------------------------------------------------ annotations

# A ``[...]`` inside a Literal string member is a placeholder: the member names a
# family of values (0.11+: ``"pissa_niter_[number of iters]"`` means "pissa_niter_16").
PLACEHOLDER = re.compile(r"\[([^\[\]]+)\]")
# ECMA-262 syntax characters; escaping only these keeps the pattern valid in
# unicode-mode regex engines, which reject escapes such as ``\-`` or ``\ ``.
REGEX_SYNTAX = frozenset("^$\\.*+?()[]{}|/")


def regex_escape(text: str) -> str:
    """Escape ``text`` for a JSON Schema (ECMA-262) pattern."""
    return "".join("\\" + ch if ch in REGEX_SYNTAX else ch for ch in text)


def placeholder_pattern(member: Any) -> str | None:
    """Anchored pattern for a placeholder Literal member, else None.

    A placeholder whose text mentions "number" stands for digits, any other for
    one or more characters; the text around placeholders is matched literally.
    """
    if not isinstance(member, str) or not PLACEHOLDER.search(member):
        return None
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(member):
        parts.append(regex_escape(member[last:match.start()]))
        parts.append(r"\d+" if "number" in match.group(1).lower() else ".+")
        last = match.end()
    parts.append(regex_escape(member[last:]))
    return "^" + "".join(parts) + "$"


@dataclasses.dataclass
class Shape:
    """Accumulated JSON shape of an annotation; ``any`` means unconstrained."""

    types: set[str] = dataclasses.field(default_factory=set)
    enum: list[Any] = dataclasses.field(default_factory=list)
    items: Shape | None = None
    items_known: bool = True
    any: bool = False
    patterns: list[str] = dataclasses.field(default_factory=list)  # string families (placeholders)

    def merge(self, other: Shape) -> Shape:
        """Union of two shapes (for ``Union``/``Optional``)."""
        if "array" in self.types and "array" in other.types:
            items = merge_items(self, other)
            known = self.items_known and other.items_known and items is not None
        else:
            src = self if "array" in self.types else other
            items, known = src.items, src.items_known
        return Shape(
            self.types | other.types,
            self.enum + [v for v in other.enum if v not in self.enum],
            items, known, self.any or other.any,
            self.patterns + [p for p in other.patterns if p not in self.patterns],
        )


def merge_items(a: Shape, b: Shape) -> Shape | None:
    """Items shape of two merged array shapes."""
    if a.items is None or b.items is None:
        return None
    return a.items.merge(b.items)


def shape_of(tp: Any) -> Shape:
    """Map a type annotation to its JSON shape."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if tp is type(None) or tp is None:
        return Shape({"null"})
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        result = Shape()
        for arg in args:
            result = result.merge(shape_of(arg))
        return result
    if origin is typing.Literal:
        values = [to_json(a) for a in args]
        patterns = [placeholder_pattern(v) for v in values]
        return Shape(enum=[v for v, p in zip(values, patterns) if p is None],
                     patterns=[p for p in patterns if p is not None])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Shape(enum=[to_json(m.value) for m in tp])
    if tp in SCALARS:
        return Shape({SCALARS[tp]})
    base = origin or tp
    if isinstance(base, type) and issubclass(base, ARRAYS):
        if not args:
            return Shape({"array"}, items_known=False)
        items = Shape()
        for arg in args:
            items = items.merge(shape_of(arg))
        return Shape({"array"}, items=None if items.any else items, items_known=not items.any)
    if isinstance(base, type) and (issubclass(base, OBJECTS) or dataclasses.is_dataclass(base)):
        return Shape({"object"})
    return Shape(any=True)


def render(shape: Shape) -> dict[str, Any]:
    """JSON Schema fragment for a shape; enum members a declared type covers are dropped."""
    if shape.any:
        return {}
    enum_values = [v for v in shape.enum if json_type(v) not in shape.types
                   and not (json_type(v) == "integer" and "number" in shape.types)]
    typed: dict[str, Any] = {}
    if shape.types:
        names = sorted(shape.types)
        typed["type"] = names[0] if len(names) == 1 else names
        if "array" in shape.types and shape.items_known and shape.items is not None:
            items = render(shape.items)
            if items:
                typed["items"] = items
    patterns = [] if "string" in shape.types else sorted(shape.patterns)
    families = [{"type": "string", "pattern": p} for p in patterns]
    if not enum_values and not families:
        return typed
    if not shape.types - {"null"}:
        values = enum_values + ([None] if "null" in shape.types else [])
        branches = ([{"enum": sorted(values, key=sort_key)}] if values else []) + families
    else:
        branches = [typed] + ([{"enum": sorted(enum_values, key=sort_key)}] if enum_values else []) + families
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def admits(shape: Shape, value: Any) -> bool:
    """Whether the rendered shape accepts the JSON value ``value``."""
    if shape.any or value in shape.enum:
        return True
    if isinstance(value, str) and any(re.search(p, value) for p in shape.patterns):
        return True
    kind = json_type(value)
    if kind not in shape.types and not (kind == "integer" and "number" in shape.types):
        return False
    if kind == "array" and shape.items_known and shape.items is not None:
        return all(admits(shape.items, v) for v in value)
    return True


def widen(shape: Shape, value: Any) -> Shape:
    """Make ``shape`` admit the default peft itself writes (e.g. ``str = None``)."""
    if admits(shape, value):
        return shape
    if json_type(value) == "array" and "array" in shape.types:
        return dataclasses.replace(shape, items=None, items_known=False)
    if shape.enum and not shape.types - {"null"} and json_type(value) in ("null", "string", "integer",
                                                                             "number", "boolean"):
        return dataclasses.replace(shape, enum=shape.enum + [value])
    return dataclasses.replace(shape, types=shape.types | {json_type(value)})


def field_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of ``cls``; a field whose annotation won't resolve maps to Any."""
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__)
        namespace = vars(module) if module else {}
        for name, ann in vars(klass).get("__annotations__", {}).items():
            try:
                hints[name] = eval(ann, namespace) if isinstance(ann, str) else ann
            except Exception:
                hints[name] = Any
    return hints


def default_of(f: dataclasses.Field) -> tuple[bool, Any]:
    """``(has_default, value)`` of a dataclass field, calling its default_factory."""
    if f.default is not dataclasses.MISSING:
        return True, f.default
    if f.default_factory is not dataclasses.MISSING:
        return True, f.default_factory()
    return False, None


def sanitize(text: str) -> str:
    """Strip memory addresses so output is reproducible."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def describe_class(cls: type, enums: dict[str, list[Any]]) -> dict[str, Any]:
    """Schema properties for every ``__init__`` field of a config dataclass."""
    hints = field_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in enums:
            # Both are annotated loosely (``Union[str, Enum]``); the enums say what peft means.
            shape = Shape(enum=list(enums[f.name]))
        else:
            shape = shape_of(hints.get(f.name, Any))
        prop: dict[str, Any] = {}
        has_default, value = default_of(f)
        if has_default:
            try:
                default = to_json(value)
            except NotJSON:
                prop["x-default-repr"] = sanitize(repr(value))
            else:
                shape = widen(shape, default)
                prop["default"] = default
        prop.update(render(shape))
        props[f.name] = prop
    return props


# ------------------------------------------------------------------- probes

def load_like_peft_model(path: str) -> Any:
    """Load a config exactly as this release's ``PeftModel.from_pretrained`` does."""
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if hasattr(PeftConfig, "_get_peft_type"):
        peft_type = PeftConfig._get_peft_type(path)
    else:  # <= 0.5: the type comes from a plain PeftConfig load
        peft_type = PeftConfig.from_pretrained(path).peft_type
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained(path)


class _Records(logging.Handler):
    """Collects log records emitted while a probe runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


def probe(content: dict[str, Any]) -> tuple[str, str | None, Any]:
    """Load ``content`` as adapter_config.json; return (outcome, message, config).

    outcome is "raise" (message = exception) or "ok" (message = the
    warnings/log lines emitted, newline-joined, or None).
    """
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("peft"), logging.getLogger("transformers")]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open(os.path.join(tmp, "adapter_config.json"), "w") as fh:
            json.dump(content, fh)
        for logger in loggers:
            logger.addHandler(handler)
        try:
            config = load_like_peft_model(tmp)
        except Exception as exc:
            return "raise", scrub(f"{type(exc).__name__}: {exc}", tmp), None
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
    lines = [f"{w.category.__name__}: {w.message}" for w in caught] + handler.messages
    return "ok", scrub("\n".join(dict.fromkeys(lines)), tmp) or None, config


def scrub(text: str, tmp: str) -> str:
    """Remove the probe's temp path from a message."""
    return sanitize(text.replace(tmp, "{path}"))


def template(message: str, **names: str) -> str:
    """Replace concrete values in ``message`` by ``{placeholder}`` names."""
    for placeholder, value in names.items():
        message = message.replace(value, "{" + placeholder + "}")
    return message


def pick(message: str | None, needle: str) -> str | None:
    """The emitted line that mentions ``needle``, if any."""
    lines = [line for line in (message or "").split("\n") if needle in line]
    return lines[0] if lines else None


def probe_unknown_key(class_name: str) -> dict[str, Any]:
    """How the loader treats a key the config class doesn't know."""
    outcome, message, config = probe({"peft_type": PROBE_CLASS_KEY, PROBE_KEY: 1})
    if outcome == "raise":
        return {"unknown_keys": "raise",
                "unknown_key_message": template(message, key=PROBE_KEY, config_class=class_name)}
    line = pick(message, PROBE_KEY)
    if line is not None:
        return {"unknown_keys": "warn",
                "unknown_key_message": template(line, key=PROBE_KEY, config_class=class_name)}
    if hasattr(config, PROBE_KEY):
        raise RuntimeError("unknown key was kept on the config: not a mode this tool knows")
    return {"unknown_keys": "ignore", "unknown_key_message": None}


def probe_unknown_peft_type() -> str | None:
    """Error template for an unknown peft_type (None if the loader accepts it)."""
    outcome, message, _ = probe({"peft_type": PROBE_PEFT_TYPE})
    return template(message, peft_type=PROBE_PEFT_TYPE) if outcome == "raise" else None


def probe_unknown_task_type(class_name: str) -> dict[str, Any]:
    """How the loader treats a task_type outside TaskType."""
    outcome, message, _ = probe({"peft_type": PROBE_CLASS_KEY, "task_type": PROBE_TASK_TYPE})
    if outcome == "raise":
        text = message
    else:
        text = pick(message, PROBE_TASK_TYPE)
        outcome = "ok" if text is None else "warn"
    if text is not None:
        text = template(text, task_type=PROBE_TASK_TYPE, config_class=class_name)
    return {"result": outcome, "message": text}


# ------------------------------------------------------- post-init rules

# Values that a release's config class (its __post_init__) or the model it builds refuses, found
# by loading probe configs in the release itself. Each probe names clauses that together may
# break a check; the release decides whether they do, and with which error. The probes were
# designed from the __post_init__ of the config classes (0.1.0 .. 0.21.2); what is stored is only
# what running them showed.
#
# A clause's ``match`` is evaluated on a user's config by peftdoctor/peft/postinit.py:
# - "one_of": the value is one of the examples that failed (an example may be "key absent");
#   each example is tried, and only those the release refuses are stored;
# - a class of values ("float", "string", "nonempty", "not_null", "not_in", "at_most", "below",
#   with ``arg``): every example must fail alike, else no rule is stored.
# ``counter`` does not meet the clause; it is tried to learn whether the clause is needed at all.

ABSENT = object()  # the key is left out of the probe file


@dataclasses.dataclass(frozen=True)
class Clause:
    key: str
    match: str
    examples: tuple
    counter: Any
    arg: Any = None


@dataclasses.dataclass(frozen=True)
class RuleProbe:
    id: str
    clauses: tuple
    stage: str = "config"  # "config": loading the file fails; "model": building the PeftModel fails
    peft_types: tuple = ()  # empty: every config class that knows all the clause keys


def one_of(key: str, examples: tuple, counter: Any) -> Clause:
    return Clause(key, "one_of", examples, counter)


REGEX_TARGETS = Clause("target_modules", "string", ("q_proj", r".*\.q_proj"), ["q_proj"])
NO_LAYERS = one_of("layers_to_transform", (ABSENT, None), [0])
LAYERS_PATTERN = Clause("layers_pattern", "nonempty", ("layers", "h"), ABSENT)
DORA = one_of("use_dora", (True,), False)
LORA_BIAS = one_of("lora_bias", (True,), False)
LOFTQ_INIT = one_of("init_lora_weights", ("loftq",), True)
LOFTQ_CONFIG = Clause("loftq_config", "nonempty", ({"loftq_bits": 4},), ABSENT)

RULE_PROBES = (
    RuleProbe("layers_to_transform-with-regex-targets",
              (REGEX_TARGETS, Clause("layers_to_transform", "not_null", ([0], 0), ABSENT))),
    RuleProbe("layers_pattern-with-regex-targets", (REGEX_TARGETS, LAYERS_PATTERN, NO_LAYERS)),
    RuleProbe("layers_pattern-without-layers_to_transform", (LAYERS_PATTERN, NO_LAYERS)),
    RuleProbe("dora-with-megatron", (DORA, Clause("megatron_config", "nonempty",
                                                  ({"tensor_model_parallel_size": 1},), ABSENT)),
              peft_types=("LORA",)),
    RuleProbe("loftq-without-loftq_config",
              (LOFTQ_INIT, one_of("loftq_config", (ABSENT, {}, None), {"loftq_bits": 4})), peft_types=("LORA",)),
    RuleProbe("dora-with-loftq", (DORA, LOFTQ_INIT, LOFTQ_CONFIG), peft_types=("LORA",)),
    RuleProbe("lora_bias-with-dora", (LORA_BIAS, DORA), peft_types=("LORA",)),
    RuleProbe("lora_bias-with-init",
              (LORA_BIAS, Clause("init_lora_weights", "not_in", ("pissa", "olora"), True, [False, True])),
              peft_types=("LORA",)),
    RuleProbe("target_parameters-string", (Clause("target_parameters", "string", ("w", "experts"), ["w"]),),
              peft_types=("LORA",)),
    RuleProbe("total_step-null", (one_of("total_step", (None, ABSENT), 100),), peft_types=("ADALORA",)),
    RuleProbe("total_step-not-positive", (Clause("total_step", "at_most", (0, -5), 100, 0),),
              peft_types=("ADALORA",)),
    RuleProbe("adalora-dora", (DORA,), peft_types=("ADALORA",)),
    RuleProbe("adalora-loftq", (LOFTQ_CONFIG,), peft_types=("ADALORA",)),
    RuleProbe("adalora-loftq-init", (LOFTQ_INIT, LOFTQ_CONFIG), peft_types=("ADALORA",)),
    RuleProbe("orth_reg_weight-negative", (Clause("orth_reg_weight", "below", (-0.25, -2), 0.5, 0),),
              peft_types=("ADALORA",)),
    RuleProbe("r-float", (Clause("r", "float", (8.0, 4.5), 8),), stage="model"),
    RuleProbe("r-string", (Clause("r", "string", ("8", "4"), 8),), stage="model"),
    RuleProbe("r-not-positive", (Clause("r", "at_most", (0, -4), 8, 0),), stage="model"),
    RuleProbe("init_r-float", (Clause("init_r", "float", (12.0, 6.5), 12),), stage="model"),
)

# What a probe config holds besides its clauses, when the class knows the key.
# 0.1.0-0.3.0 default lora_alpha and lora_dropout to None, which their own layers cannot build;
# the files they wrote carry numbers.
BASE_VALUES = {"target_modules": ["q_proj"], "total_step": 100, "lora_alpha": 8, "lora_dropout": 0.0}


def log(message: str) -> None:
    """A note on stderr (the JSON goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def tiny_model() -> Any:
    """A one-layer OPT built from a config (no download); OPT is in every era's transformers."""
    import transformers

    config = transformers.OPTConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16)
    return transformers.OPTForCausalLM(config)


def build_like_peft_model(path: str) -> Any:
    """Load the config and build the PeftModel as ``PeftModel.from_pretrained`` does before the weights."""
    import peft

    config = load_like_peft_model(path)
    config.inference_mode = True
    return peft.PeftModel(tiny_model(), config)


def attempt(content: dict[str, Any], stage: str) -> str | None:
    """The error (``Type: message``) the release raises for ``content`` at ``stage``, or None."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open(os.path.join(tmp, "adapter_config.json"), "w") as fh:
            json.dump(content, fh)
        try:
            (build_like_peft_model if stage == "model" else load_like_peft_model)(tmp)
        except Exception as exc:
            return scrub(f"{type(exc).__name__}: {exc}", tmp)
    return None


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each key set to its value, or left out for ABSENT."""
    out = dict(base)
    for key, value in values.items():
        out.pop(key, None)
        if value is not ABSENT:
            out[key] = value
    return out


def fill_out(message: str, values: dict[str, Any], keys: list[str]) -> str:
    """``message`` with the str() of each named key's value replaced by ``{key}``."""
    for key in keys:
        message = message.replace(str(values[key]), "{" + key + "}")
    return message


def stored(value: Any) -> dict[str, Any]:
    return {"absent": True} if value is ABSENT else {"value": value}


def same_example(a: Any, b: Any) -> bool:
    """Identity for ABSENT, else equal values of one type (True is not 1, 8.0 is not 8)."""
    return a is b or a is not ABSENT and b is not ABSENT and type(a) is type(b) and a == b


def first_failure(spec: RuleProbe, base: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The first combination of examples the release refuses (one_of clauses tried in turn), and its error."""
    combos = [{c.key: c.examples[0] for c in spec.clauses}]
    for clause in spec.clauses:
        if clause.match == "one_of":
            combos += [{**combo, clause.key: e} for combo in list(combos) for e in clause.examples[1:]]
    for combo in combos:
        error = attempt(with_values(base, combo), spec.stage)
        if error is not None:
            return combo, error
    return None


def measure_rule(spec: RuleProbe, base: dict[str, Any]) -> dict[str, Any] | None:
    """Run one probe on one config class; the rule it shows, or None when the release accepts it."""
    found = first_failure(spec, base)
    if found is None:
        return None
    first, error = found
    failing: dict[str, list[Any]] = {}
    placeholders: list[str] = []
    for clause in spec.clauses:
        failing[clause.key] = [first[clause.key]]
        for example in clause.examples:
            if same_example(example, first[clause.key]):
                continue
            values = {**first, clause.key: example}
            other = attempt(with_values(base, values), spec.stage)
            if other == error:
                failing[clause.key].append(example)
                continue
            if clause.match == "one_of":
                continue  # this value passes (or breaks something else): not part of the rule
            # A message that differs only where it quotes the value: the key becomes a placeholder.
            if (other is not None and example is not ABSENT and clause.key not in placeholders
                    and fill_out(other, values, [clause.key]) == fill_out(error, first, [clause.key])):
                placeholders.append(clause.key)
                failing[clause.key].append(example)
                continue
            log(f"{base['peft_type']} {spec.id}: {clause.key}={example!r} gives {other!r}, not {error!r}")
            return None
    template = fill_out(error, first, placeholders)
    # A clause whose counter value fails alike is not needed: the release refuses without it.
    needed, current = [], dict(first)
    for clause in spec.clauses:
        trial = {**current, clause.key: clause.counter}
        other = attempt(with_values(base, trial), spec.stage)
        if other is not None and clause.key not in placeholders and fill_out(other, trial, placeholders) == template:
            current = trial
        else:
            needed.append(clause)
    if not needed:
        log(f"{base['peft_type']} {spec.id}: fails whatever the clause values: {error!r}")
        return None
    when = []
    for clause in needed:
        order = [e for e in clause.examples if any(same_example(e, f) for f in failing[clause.key])]
        entry: dict[str, Any] = {"key": clause.key, "match": clause.match,
                                 "examples": [stored(v) for v in order], "counter": stored(clause.counter)}
        if clause.arg is not None:
            entry["arg"] = clause.arg
        when.append(entry)
    rule = {"id": spec.id, "stage": spec.stage, "when": when, "error": template}
    if placeholders:
        rule["placeholders"] = placeholders
    return rule


def signature(rule: dict[str, Any]) -> tuple:
    """What a rule says, less the probe that found it."""
    return rule["stage"], rule["error"], json.dumps([[w["key"], w["match"], w.get("arg"), w["examples"]]
                                                     for w in rule["when"]], sort_keys=True)


def post_init_rules(mapping: dict[str, type]) -> list[dict[str, Any]]:
    """The rules the config classes (or the models they build) showed, in probe order; a rule
    that several peft_types showed alike is stored once, with all of them in ``peft_types``."""
    found: dict[tuple, dict[str, Any]] = {}  # (probe index, signature) -> rule
    for peft_type, cls in sorted(mapping.items()):
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        base = {"peft_type": peft_type, **{k: v for k, v in BASE_VALUES.items() if k in known}}
        controls: dict[str, bool] = {}
        seen: set[tuple] = set()
        for index, spec in enumerate(RULE_PROBES):
            if spec.peft_types and peft_type not in spec.peft_types:
                continue
            if not all(c.key in known for c in spec.clauses):
                continue
            if spec.stage not in controls:
                # Only a class whose plain config loads (and builds) can tell what a clause breaks.
                controls[spec.stage] = attempt(base, spec.stage) is None
            if not controls[spec.stage]:
                continue
            rule = measure_rule(spec, base)
            # Two probes can reveal one check (a class without the regex check refuses
            # layers_pattern alone): keep the first.
            if rule is None or signature(rule) in seen:
                continue
            seen.add(signature(rule))
            found.setdefault((index, signature(rule)), {**rule, "peft_types": []})["peft_types"].append(peft_type)
    return [found[key] for key in sorted(found, key=lambda k: (k[0], found[k]["peft_types"][0]))]


# --------------------------------------------------------------------- main

def enum_values(enum_cls: type[enum.Enum]) -> list[Any]:
    """Values of an enum class, sorted."""
    return sorted((to_json(m.value) for m in enum_cls), key=sort_key)


def introspect() -> dict[str, Any]:
    """The full description of the importable peft release."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    mapping = {to_json(k): cls for k, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    # Mapping keys load too even when PeftType lacks them (0.13's "LORAPLUS").
    peft_types = sorted(set(enum_values(peft.PeftType)) | set(mapping), key=sort_key)
    task_types = enum_values(peft.TaskType)
    enums = {"peft_type": [None] + peft_types, "task_type": [None] + task_types}
    classes = {
        key: {"class": cls.__name__, "properties": describe_class(cls, enums)}
        for key, cls in sorted(mapping.items())
    }
    lora_class = mapping[PROBE_CLASS_KEY].__name__
    return {
        "version": peft.__version__,
        "peft_types": peft_types,
        "task_types": task_types,
        "config_classes": classes,
        **probe_unknown_key(lora_class),
        "unknown_peft_type_error": probe_unknown_peft_type(),
        "unknown_task_type": probe_unknown_task_type(lora_class),
        "post_init_rules": post_init_rules(mapping),
    }


def main() -> int:
    """Print the description; anything the imports print goes to stderr, not the JSON."""
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # old bitsandbytes/transformers print banners at C and Python level
    try:
        with contextlib.redirect_stdout(sys.stderr):
            doc = introspect()
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
