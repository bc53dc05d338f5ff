"""Generate peftdoctor/peft/architectures.json from the real transformers model classes.

For each model_type transformers knows, the script builds its causal-LM class (the base model class where
there is none), and its sequence-classification class where one exists, on the meta device (no memory,
no weights) from a small config, three times, with the size attributes (hidden_size, intermediate_size,
num_attention_heads, num_key_value_heads, head_dim, vocab_size, ...) set to different values. It walks
named_modules(), folds layer indices (`model.layers.{i}.self_attn.q_proj`), and solves each weight
dimension as one config attribute or a small product/sum/quotient of them, so that peftdoctor computes
the real shapes of a base from its config.json alone, without torch. Each expression must then give the
shapes of two builds it was not solved from (other small sizes, and the config class's default sizes), or
it is dropped. Dimensions with no such expression are null; model types that cannot be built from their
default config are listed under "skipped" with why.

    python scripts/generate_architectures.py                  # every model_type
    python scripts/generate_architectures.py llama gpt2       # just these (others kept as they are)
    python scripts/generate_architectures.py --check          # exit 1 if the committed table differs

Output is byte-for-byte reproducible for one transformers release; names changed across releases (for
example the VLMs' `model.language_model.*` from 4.52), so the table records the version that made it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from peftdoctor.peft.architectures import Architecture, fold  # noqa: E402 - as check evaluates and folds

OUT = ROOT / "peftdoctor" / "peft" / "architectures.json"

# Config attribute names per size concept; each attribute whose default is an int is set per variant.
SIZES: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "word_embed_proj_dim", "embedding_size"),
    "intermediate": ("intermediate_size", "ffn_dim", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim",
                     "moe_intermediate_size", "shared_expert_intermediate_size", "n_inner"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads",
              "decoder_attention_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"),
    "head_dim": ("head_dim", "d_kv", "kv_channels"),
    "vocab": ("vocab_size",),
    "positions": ("max_position_embeddings", "n_positions"),
    "type_vocab": ("type_vocab_size",),
    "shared_experts": ("n_shared_experts", "num_shared_experts"),
}
VARIANTS: tuple[dict[str, int], ...] = (
    {"hidden": 64, "intermediate": 96, "heads": 4, "kv_heads": 2, "head_dim": 8, "vocab": 120, "positions": 40,
     "type_vocab": 3, "shared_experts": 1},
    {"hidden": 96, "intermediate": 160, "heads": 8, "kv_heads": 2, "head_dim": 24, "vocab": 136, "positions": 48,
     "type_vocab": 5, "shared_experts": 2},
    {"hidden": 80, "intermediate": 112, "heads": 4, "kv_heads": 4, "head_dim": 18, "vocab": 152, "positions": 56,
     "type_vocab": 7, "shared_experts": 3},
)
# Within one concept the j-th name gets value + OFFSETS * j (multiples of 16 keep widths divisible by heads).
OFFSETS = {"hidden": 16, "intermediate": 16, "head_dim": 2, "positions": 8}
# A fourth build, never used to solve: each expression must also give its shapes, or it is dropped.
HELD_OUT: dict[str, int] = {"hidden": 112, "intermediate": 144, "heads": 8, "kv_heads": 4, "head_dim": 12, "vocab": 168,
                            "positions": 64, "type_vocab": 4, "shared_experts": 2}
# Fixed small values: few layers (the names fold), few experts.
FIXED: dict[str, int] = {
    **{n: 2 for n in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers", "decoder_layers",
                      "num_experts_per_tok", "num_experts_per_token", "moe_topk")},
    **{n: 4 for n in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")},
}
KINDS = {"Linear": "Linear", "Embedding": "Embedding", "Conv1D": "Conv1D", "Conv2d": "Conv2d", "Conv1d": "Conv1d",
         "LayerNorm": "LayerNorm"}
PER_MODEL_SECONDS = 60
# The kind of a bare parameter of 3 or more dimensions (the fused experts of transformers 5, what peft's
# target_parameters adapts): kept apart from the modules, under the entry's "parameters".
PARAMETER = "Parameter"
_SET_NAMES = frozenset(n for names in SIZES.values() for n in names)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- building


def _sized(values: dict[str, Any], variant: Optional[dict[str, int]], omit: frozenset[str] = frozenset(),
           prefix: str = "") -> dict[str, Any]:
    """A config dict with layers/experts made small and, for a variant, the size attributes set (sub-configs
    too); attributes in `omit` are left out, for the config class to compute them from the others."""
    out = dict(values)
    layers = next((values[k] for k in FIXED if k in values and FIXED[k] == 2 and isinstance(values[k], int)), None)
    for key, value in values.items():
        path = prefix + key
        if path in omit:
            out.pop(key)
        elif isinstance(value, dict) and "model_type" in value:
            out[key] = _sized(value, _shifted(variant, sorted(_subconfigs(values)).index(key) + 1), omit, f"{path}.")
        elif key.endswith(("token_id", "token_index")) and variant is not None:
            out[key] = _token(value)  # token ids index the (small) vocabulary: padding_idx must fit in it
        elif isinstance(value, list) and layers and len(value) == layers:
            out[key] = value[:2]  # per-layer lists (layer_types) follow the layer count
        elif not isinstance(value, int) or isinstance(value, bool):
            continue
        elif key in FIXED:
            out[key] = FIXED[key]
        elif variant is not None:
            concept = next((c for c, names in SIZES.items() if key in names), None)
            if concept is not None:  # names of one concept get apart values: moe_ vs intermediate_size
                out[key] = variant[concept] + OFFSETS.get(concept, 0) * SIZES[concept].index(key)
    return out


def _token(value: Any) -> Any:
    if isinstance(value, list):
        return [_token(v) for v in value]
    return value % 100 if isinstance(value, int) and not isinstance(value, bool) and value >= 100 else value


def _subconfigs(values: dict[str, Any]) -> list[str]:
    return [k for k, v in values.items() if isinstance(v, dict) and "model_type" in v]


def _shifted(variant: Optional[dict[str, int]], k: int) -> Optional[dict[str, int]]:
    """Sizes for the k-th sub-config (text_config, vision_config, ...): other widths than the top level and
    the other sub-configs, so that a vision tower's dimension is never explained by the text model's."""
    if variant is None:
        return None
    steps = {"hidden": 16 * 7, "intermediate": 16 * 7, "head_dim": 2 * 7, "vocab": 2, "positions": 8 * 7,
             "type_vocab": 1}
    return {c: v + steps.get(c, 0) * k for c, v in variant.items()}


def _config(model_type: str, variant: Optional[dict[str, int]], omit: frozenset[str] = frozenset()) -> Any:
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    defaults = cls().to_dict()
    sized = _sized(defaults, variant, omit)
    kwargs = {k: v for k, v in sized.items() if v != defaults.get(k)}
    return cls(**kwargs)


def _classes(model_type: str) -> list[Any]:
    from transformers.models.auto import modeling_auto as auto

    # MODEL_FOR_IMAGE_TEXT_TO_TEXT came in 4.46; before it the VLMs (llava) were under VISION_2_SEQ only
    for mapping in ("MODEL_FOR_CAUSAL_LM_MAPPING", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING",
                    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING", "MODEL_MAPPING", "MODEL_FOR_VISION_2_SEQ_MAPPING"):
        names = getattr(auto, mapping + "_NAMES", {})
        if model_type in names:
            first = getattr(auto, mapping)
            break
    else:
        raise LookupError("no causal-LM, image-text-to-text, seq2seq or base model class")
    found = [first]
    if model_type in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        found.append(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)
    return found


def _build(auto_mapping: Any, config: Any) -> Any:
    import torch

    model_cls = auto_mapping[type(config)]
    with torch.device("meta"):
        return model_cls._from_config(config) if hasattr(model_cls, "_from_config") else model_cls(config)


def _walk(model: Any) -> dict[str, tuple[str, Optional[tuple[int, ...]]]]:
    """Folded module name -> (kind, weight shape); a shape of None where folded layers disagree."""
    seen: dict[str, tuple[str, Optional[tuple[int, ...]]]] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        kind = KINDS.get(type(module).__name__, "other")
        weight = module.__dict__.get("_parameters", {}).get("weight")
        shape = tuple(int(d) for d in weight.shape) if weight is not None else None
        _see(seen, fold(name), kind, shape)
        for pname, param in module.__dict__.get("_parameters", {}).items():
            if param is not None and kind == "other" and param.dim() >= 3:  # fused MoE experts: target_parameters
                _see(seen, fold(f"{name}.{pname}"), PARAMETER, tuple(int(d) for d in param.shape))
    return seen


def _see(seen: dict[str, tuple[str, Optional[tuple[int, ...]]]], key: str, kind: str,
         shape: Optional[tuple[int, ...]]) -> None:
    if key in seen and seen[key] != (kind, shape):
        seen[key] = (seen[key][0] if seen[key][0] == kind else "other", None)
    else:
        seen.setdefault(key, (kind, shape))


def _ints(config: Any) -> dict[str, int]:
    """Every integer attribute of the config, sub-configs as `text_config.hidden_size`."""
    return _ints_of(config.to_dict())


def _ints_of(values: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            found[key] = value
        elif isinstance(value, dict) and "model_type" in value:
            found.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)})
    return found


# --------------------------------------------------------------------------- solving


def _priority(var: str, set_vars: set[str]) -> tuple[int, int, str]:
    return (var not in set_vars, var.count("."), var)


def _candidates(vars_: dict[str, tuple[int, ...]], set_vars: set[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Expressions in order of preference: one attribute, k*attribute, a*b, a//b, a+b, a*b//c; the
    attributes of one expression come from one config level (a dimension of the text model is never a
    product of its width and the vision tower's head count)."""
    order = sorted(vars_, key=lambda v: _priority(v, set_vars))
    out: list[tuple[str, tuple[int, ...]]] = [(v, vars_[v]) for v in order]
    out += [(f"{k}*{v}", tuple(k * x for x in vars_[v])) for k in range(2, 9) for v in order]
    for level in sorted({v.rpartition(".")[0] for v in order}):
        out += _combinations([v for v in order if v.rpartition(".")[0] == level], vars_)
    return out


def _combinations(order: list[str], vars_: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = []
    pairs = list(itertools.combinations(order, 2))
    out += [(f"{a}*{b}", tuple(x * y for x, y in zip(vars_[a], vars_[b]))) for a, b in pairs]
    for a, b in itertools.permutations(order, 2):
        if all(y and x % y == 0 for x, y in zip(vars_[a], vars_[b])):
            out.append((f"{a}//{b}", tuple(x // y for x, y in zip(vars_[a], vars_[b]))))
    out += [(f"{a}+{b}", tuple(x + y for x, y in zip(vars_[a], vars_[b]))) for a, b in pairs]
    for (a, b), c in itertools.product(pairs, order):
        if c not in (a, b):
            out += _scaled(a, b, c, vars_)
    return out


def _scaled(a: str, b: str, c: str, vars_: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """a*b/c written the way models compute it, floor first (hidden_size//num_attention_heads*kv_heads is
    head_dim*kv_heads, also where the width does not divide)."""
    for x, y in ((a, b), (b, a)):
        if all(z and v % z == 0 for v, z in zip(vars_[x], vars_[c])):
            return [(f"{x}//{c}*{y}", tuple(v // z * w for v, w, z in zip(vars_[x], vars_[y], vars_[c])))]
    return []


def _sum_of_products(values: tuple[int, ...], vars_: dict[str, tuple[int, ...]], set_vars: set[str]) -> Optional[str]:
    """Last resort for fused layers (phi3's qkv_proj: hidden + 2*kv_heads*hidden//heads): two terms, each
    k*a, k*a*b or k*a*b//c (k 1 or 2) over the size attributes of one config level."""
    for prefix in sorted({v.rpartition(".")[0] for v in set_vars}):
        group = sorted(v for v in set_vars if v.rpartition(".")[0] == prefix and v in vars_)
        products: list[tuple[str, tuple[int, ...]]] = [(a, vars_[a]) for a in group]
        pairs = [(f"{a}*{b}", tuple(x * y for x, y in zip(vars_[a], vars_[b])))
                 for a, b in itertools.combinations(group, 2)]
        products += pairs
        products += [found for a, b in itertools.combinations(group, 2) for c in group if c not in (a, b)
                     for found in _scaled(a, b, c, vars_)]
        terms: dict[tuple[int, ...], str] = {}
        for k in (1, 2):
            for name, vals in products:
                terms.setdefault(tuple(k * x for x in vals), name if k == 1 else f"{k}*{name}")
        for first, name in terms.items():
            rest = tuple(v - x for v, x in zip(values, first))
            if rest in terms and terms[rest] != name and min(rest) > 0:
                return f"{name}+{terms[rest]}"
    return None


def _solve(values: tuple[int, ...], table: dict[tuple[int, ...], str], constants: dict[int, list[str]],
           fallback: Any = None) -> Any:
    """The expression of one dimension. A dimension the same in every build is the one config attribute of
    that value (num_experts, kv_lora_rank, ...), or unknown (null): a literal could be a default that a real
    base changes."""
    if len(set(values)) == 1:
        names = constants.get(values[0], [])
        return names[0] if len(names) == 1 else None
    found = table.get(values)
    return found if found is not None or fallback is None else fallback(values)


def _table(candidates: list[tuple[str, tuple[int, ...]]]) -> dict[tuple[int, ...], str]:
    table: dict[tuple[int, ...], str] = {}
    for expr, values in candidates:
        table.setdefault(values, expr)
    return table


# --------------------------------------------------------------------------- one model type


@contextlib.contextmanager
def _deadline(seconds: int):
    def alarm(*_: Any) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _named(model: Any, target: Any) -> Optional[str]:
    if target is None:
        return None
    return next((fold(n) for n, m in model.named_modules() if m is target), None)


def describe(model_type: str) -> dict[str, Any]:
    """The table entry of one model_type (raises when it cannot be built from its default config)."""
    mappings = _classes(model_type)
    notes: list[str] = []
    configs, walks, first_model, built = [], [], None, []
    for variant in VARIANTS:
        try:
            config = _config(model_type, variant)
            models = [_build(m, config) for m in mappings[:1]]
        except Exception as exc:  # noqa: BLE001 - a variant the architecture refuses: fewer variants
            notes.append(f"sizes {variant['hidden']}/{variant['heads']} refused: {_why(exc)}")
            continue
        configs.append(config)
        built.append(variant)
        walks.append(_walk(models[0]))
        first_model = first_model or models[0]
    if len(configs) < 2:
        config = _config(model_type, None)
        first_model = _build(mappings[0], config)
        configs, walks = [config], [_walk(first_model)]
        notes.append("shapes unsolved: the model builds only from its default sizes")
    entry: dict[str, Any] = {"class": type(first_model).__name__}
    modules = _modules(configs, walks, notes)
    if len(mappings) > 1:
        try:
            extra = _build(mappings[1], configs[0])
            entry["seq_cls_class"] = type(extra).__name__
            for name, (kind, _shape) in _walk(extra).items():
                modules.setdefault(name, [kind, None])
        except Exception as exc:  # noqa: BLE001
            notes.append(f"sequence-classification class not built: {_why(exc)}")
    entry["modules"] = modules
    entry["input_embeddings"] = _named(first_model, _try(first_model.get_input_embeddings))
    entry["output_embeddings"] = _named(first_model, _try(first_model.get_output_embeddings))
    tied = getattr(first_model, "_tied_weights_keys", None)
    entry["tied"] = {k: v for k, v in sorted(tied.items())} if isinstance(tied, dict) else {}
    default = _config(model_type, None)
    entry["tie_word_embeddings"] = bool(getattr(default, "tie_word_embeddings", False))
    held_out = _held_out(model_type, mappings[0], notes) if len(configs) > 1 else []
    dropped = sum(_verify_modules(model_type, entry, config, walk) for config, walk in held_out)
    if dropped:
        notes.append(f"{dropped} dimension(s) disagreed with a held-out build: left unknown (null)")
    entry.update(_variables(model_type, built, configs, modules, default))
    if held_out:
        _verify_derived(model_type, entry, notes)
    entry["notes"] = notes
    parameters = {n: dims for n, (kind, dims) in entry["modules"].items() if kind == PARAMETER}
    if parameters:
        entry["parameters"] = parameters
        entry["modules"] = {n: m for n, m in entry["modules"].items() if n not in parameters}
    return entry


def _held_out(model_type: str, mapping: Any, notes: list[str]) -> list[tuple[dict[str, Any], dict]]:
    """Builds never used to solve: a fourth set of small sizes, and the config class's own default sizes."""
    builds = []
    for variant, what in ((HELD_OUT, "held-out sizes"), (None, "default sizes")):
        try:
            config = _config(model_type, variant)
            builds.append((config.to_dict(), _walk(_build(mapping, config))))
        except Exception as exc:  # noqa: BLE001
            notes.append(f"no build at the {what} verified the shapes: {_why(exc)}")
    return builds


def _verify_modules(model_type: str, entry: dict[str, Any], config: dict[str, Any], walk: dict) -> int:
    """Drop (to null) every dimension whose expression does not give a held-out build's shape; how many."""
    arch = Architecture(model_type, entry, config)
    dropped = 0
    for name, (kind, dims) in entry["modules"].items():
        if not dims or name not in walk:  # a module this build does not have says nothing
            continue
        real = walk[name][1]
        if real is None or len(real) != len(dims):
            entry["modules"][name] = [kind, None]
            dropped += sum(d is not None for d in dims)
            continue
        kept = [d if d is not None and arch.value(d) == r else None for d, r in zip(dims, real)]
        dropped += sum(a is not None and b is None for a, b in zip(dims, kept))
        entry["modules"][name] = [kind, kept]
    return dropped


def _verify_derived(model_type: str, entry: dict[str, Any], notes: list[str]) -> None:
    for var, expr in list(entry["derived"].items()):
        try:
            config = _config(model_type, HELD_OUT, frozenset({var})).to_dict()
        except Exception:  # noqa: BLE001
            config = {}
        real = _ints_of(config).get(var)
        if real is None or Architecture(model_type, {**entry, "derived": {}}, config).value(expr) != real:
            del entry["derived"][var]
            notes.append(f"derived {var} = {expr} disagreed with the held-out build: dropped")


def _try(getter: Any) -> Any:
    try:
        return getter()
    except Exception:  # noqa: BLE001 - some classes do not implement the accessor
        return None


def _why(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:200]


def _modules(configs: list[Any], walks: list[dict], notes: list[str]) -> dict[str, list[Any]]:
    ints = [_ints(c) for c in configs]
    common = set.intersection(*(set(i) for i in ints))
    varying = {k: tuple(i[k] for i in ints) for k in sorted(common) if len({i[k] for i in ints}) > 1}
    set_vars = {v for v in varying if v.rsplit(".", 1)[-1] in _SET_NAMES}
    table = _table(_candidates(varying, set_vars)) if len(configs) > 1 else {}
    def fallback(values: tuple[int, ...]) -> Optional[str]:
        return _sum_of_products(values, varying, set_vars)

    constants: dict[int, list[str]] = {}
    for key in sorted(common):
        if key not in varying:
            constants.setdefault(ints[0][key], []).append(key)
    modules: dict[str, list[Any]] = {}
    names = set(walks[0])
    if any(set(w) != names for w in walks[1:]):
        notes.append("module names depend on the sizes; names from the first build")
    for name in sorted(names):
        kind, shape = walks[0][name]
        shapes = [w.get(name, (kind, None))[1] for w in walks]
        if shape is None or any(s is None or len(s) != len(shape) for s in shapes) or len(configs) < 2:
            modules[name] = [kind, None]
            continue
        modules[name] = [kind, [_solve(tuple(s[d] for s in shapes), table, constants, fallback) for d in range(len(shape))]]
    return modules


def _variables(model_type: str, variants: list[dict[str, int]], configs: list[Any],
               modules: dict[str, dict[str, Any]], default: Any) -> dict[str, Any]:
    """The attributes the shapes use: their defaults (for a config.json that omits them) and, for those the
    config class computes from others when absent (head_dim from hidden_size // num_attention_heads), the
    formula, found by building the configs again without the attribute."""
    used = sorted({tok for m in modules.values() for d in (m[1] or []) if isinstance(d, str)
                   for tok in _tokens(d)})
    defaults = _ints(default)
    ints = [_ints(c) for c in configs]
    derived: dict[str, str] = {}
    for var in used:
        try:
            again = [_ints(_config(model_type, v, frozenset({var}))) for v in variants]
        except Exception:  # noqa: BLE001 - the class requires it: the default (or config.json) decides
            continue
        values = tuple(i.get(var) for i in again)
        if len(again) < 2 or any(not isinstance(x, int) for x in values) or len(set(values)) == 1:
            continue
        inputs = {k: tuple(i[k] for i in ints) for k in ints[0] if k != var and all(k in i for i in ints)
                  and len({i[k] for i in ints}) > 1 and k.rsplit(".", 1)[-1] in _SET_NAMES}
        expr = _table(_candidates(inputs, set(inputs))).get(values)
        if expr is not None:
            derived[var] = expr
    return {"defaults": {v: defaults.get(v) for v in used}, "derived": derived}


def _tokens(expr: str) -> list[str]:
    return [t for t in expr.replace("//", "*").replace("+", "*").split("*") if not t.isdigit()]


# --------------------------------------------------------------------------- the whole table


def model_types() -> list[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return sorted(CONFIG_MAPPING_NAMES)


def generate(only: Optional[list[str]] = None, budget: float = 900.0) -> dict[str, Any]:
    import transformers
    from transformers import CONFIG_MAPPING

    _quiet()
    entries: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    started = time.monotonic()
    for n, model_type in enumerate(only or model_types()):
        if n and n % 100 == 0:
            log(f"{n} model types, {time.monotonic() - started:.0f} s")
        if time.monotonic() - started > budget:
            skipped[model_type] = "not built: the generator's time budget ran out"
            continue
        with contextlib.suppress(Exception):  # import the classes outside the deadline: a first import
            _classes(model_type)[0][CONFIG_MAPPING[model_type]]  # compiles them, slow on a busy machine
        try:
            with _deadline(PER_MODEL_SECONDS), contextlib.redirect_stdout(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entries[model_type] = describe(model_type)
        except BaseException as exc:  # noqa: BLE001 - recorded: which model types are absent, and why
            if isinstance(exc, KeyboardInterrupt):
                raise
            skipped[model_type] = _why(exc)
    return {"generator": "scripts/generate_architectures.py", "transformers": transformers.__version__,
            "model_types": entries, "skipped": skipped}


def dumps(data: Any, indent: str = "") -> str:
    """Sorted keys; dicts one key a line, everything else on one line (a module is one line)."""
    if not isinstance(data, dict) or not data:
        return json.dumps(data, sort_keys=True) + ("" if indent else "\n")
    inner = indent + " "
    lines = [f"{inner}{json.dumps(k)}: {dumps(data[k], inner)}" for k in sorted(data)]
    return "{\n" + ",\n".join(lines) + f"\n{indent}}}" + ("" if indent else "\n")


def entry_text(entry: dict[str, Any]) -> str:
    """One model_type's entry as the test compares it."""
    return json.dumps(entry, sort_keys=True)


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_types", nargs="*")
    parser.add_argument("--check", action="store_true", help="compare with the committed table; write nothing")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds before the rest are skipped")
    parser.add_argument("--stdout", action="store_true", help="print the entries made (the transformers axis "
                        "runs this under each release: scripts/generate_transformers_axis.py); write nothing")
    args = parser.parse_args(argv)
    fresh = generate(args.model_types or None, args.budget)
    if args.stdout:
        print(json.dumps(fresh, sort_keys=True))
        return 0
    if args.model_types and OUT.exists():
        merged = json.loads(OUT.read_text("utf-8"))
        for name in args.model_types:
            merged["model_types"].pop(name, None)
            merged["skipped"].pop(name, None)
        merged["model_types"].update(fresh["model_types"])
        merged["skipped"].update(fresh["skipped"])
        merged["transformers"] = fresh["transformers"]
        fresh = merged
    text = dumps(fresh)
    log(f"{len(fresh['model_types'])} model types, {len(fresh['skipped'])} skipped")
    if args.check:
        same = OUT.exists() and OUT.read_text("utf-8") == text
        log("architectures.json is up to date" if same else "architectures.json differs: regenerate it")
        return 0 if same else 1
    OUT.write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
