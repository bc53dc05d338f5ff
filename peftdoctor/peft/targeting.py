"""Which modules a peft release puts adapter layers on: THE matcher of target_modules.

Plain functions over module names, the config dict and the release Version. Each regime is read
from peft's own source and keyed by the first release that behaves so (as peft/patterns.py does):

- check_target_module_exists (peft/tuners/tuners_utils.py, 0.6.0 on; before, LoraModel.
  _find_and_replace / _check_target_module_exists in peft/tuners/lora.py): a string target_modules
  is `re.fullmatch`; a list entry matches an exact name or a `.entry` suffix; then
  layers_to_transform keeps the modules whose layer index (found with layers_pattern) is listed;
  exclude_modules and modules_to_save are refused first where the release knows them;
- _maybe_include_all_linear_layers (same file, 0.8.0 on): "all-linear" (any case) becomes the exact
  names of every Linear/Conv1D module except the output head;
- _set_trainable (peft/utils/other.py): a modules_to_save entry matches a name ending with it.

Every regex built from a config value runs through peft/bounded.py, so a hostile pattern cannot
hang a check. Functions raise `re.error` (a bad or unbounded pattern) or ValueError (peft itself
raises: a layers_pattern with its own group before 0.21) where peft would fail: `PROBLEMS`.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from packaging.version import Version

from peftdoctor.peft import bounded, patterns

PROBLEMS = (re.error, ValueError)  # what the functions here raise where peft itself would fail
ALL_LINEAR = "all-linear"  # INCLUDE_LINEAR_LAYERS_SHORTHAND
# The modules get_output_embeddings() returns in the causal-LM bases peft targets; SEQ_CLS_HEAD_NAMES
# (peft/utils/constants.py) for classifiers without output embeddings.
OUTPUT_HEADS = ("lm_head", "embed_out")
SEQ_CLS_HEADS = ("score", "classifier")
COMMON_LAYERS_PATTERN = ("layers", "h", "block", "blocks", "layer")  # peft/utils/other.py (0.4-0.7)


@dataclass(frozen=True)
class Regime:
    since: Version
    entry: str  # how a list entry t matches name k: "endswith" k.endswith(t); "regex" re.match(.*\.t$) or
    #             k == t; "dotted" k == t or k.endswith("." + t)
    layers: bool  # layers_to_transform is read at all
    empty_layers_filter: bool  # layers_to_transform=[] still filters (keeps nothing)
    exact_skips_layers: bool  # an exact name in target_modules is kept whatever its layer
    default_layer_regex: Optional[str]  # used when layers_pattern is empty; None: COMMON_LAYERS_PATTERN
    layer_regex: str  # {pattern} is the layers_pattern entry
    idx_group: Any  # the group holding the index (1, or "idx")
    all_linear: bool
    exclude_modules: bool
    excludes_modules_to_save: bool


def _regime(since: str, entry: str, layers: bool = True, empty_filter: bool = False, exact_skips: bool = True,
            default: Optional[str] = r".*\.[^.]*\.(\d+)\.", layer: str = r".*\.{pattern}\.(\d+)\.",
            idx: Any = 1, all_linear: bool = True, exclude: bool = True, mts: bool = True) -> Regime:
    return Regime(Version(since), entry, layers, empty_filter, exact_skips, default, layer, idx, all_linear,
                  exclude, mts)


_OLD_LAYERS = dict(empty_filter=True, exact_skips=False, default=None, layer=r".*.{pattern}\.(\d+)\.*",
                   all_linear=False, exclude=False, mts=False)
_REGIMES: tuple[Regime, ...] = (
    # 0.21.0: the first layer index, and layers_pattern may match at the start of the name.
    _regime("0.21.0", "dotted", default=r".*?\.[^.]*\.(?P<idx>\d+)\.", layer=r"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.",
            idx="idx"),
    # 0.20.0: lazy .*? picks the first index (the layer), not an expert index after it.
    _regime("0.20.0", "dotted", default=r".*?\.[^.]*\.(\d+)\.", layer=r".*?\.{pattern}\.(\d+)\."),
    _regime("0.16.0", "dotted"),  # modules_to_save are never targeted
    _regime("0.14.0", "dotted", mts=False),  # exclude_modules
    _regime("0.8.0", "dotted", exclude=False, mts=False),  # all-linear; exact names skip the layer filter
    _regime("0.6.0", "dotted", **_OLD_LAYERS),  # check_target_module_exists
    _regime("0.5.0", "regex", **_OLD_LAYERS),
    _regime("0.4.0", "endswith", **_OLD_LAYERS),  # layers_to_transform / layers_pattern
    _regime("0.0", "endswith", layers=False, **_OLD_LAYERS),
)


def regime(version: Version) -> Regime:
    return next(r for r in _REGIMES if version >= r.since)


def names_all_linear(targets: Any) -> bool:
    """Whether target_modules is the all-linear shorthand as peft spells it (any case)."""
    return isinstance(targets, str) and targets.lower() == ALL_LINEAR


def is_all_linear(targets: Any, version: Version) -> bool:
    """Whether `version` expands target_modules to all linear layers (before 0.8.0 it is a regex)."""
    return regime(version).all_linear and names_all_linear(targets)


def is_output_head(config: Mapping[str, Any], name: str) -> bool:
    """Whether all-linear leaves module `name` out as the output head, by the names heads have
    (lm_head, or language_model.lm_head in a VLM), when the base is not at hand."""
    heads = OUTPUT_HEADS + (SEQ_CLS_HEADS if config.get("task_type") == "SEQ_CLS" else ())
    return name.rsplit(".", 1)[-1] in heads


def targeted(config: Mapping[str, Any], name: str, version: Version,
             linear: Optional[Collection[str]] = None) -> bool:
    """Whether peft `version` builds an adapter layer on module `name` (a module path of the base,
    without base_model.model.). `linear`: the base's Linear/Conv1D module names, for all-linear; when
    unknown, `name` is taken to be one of them (it holds adapter weights) unless it is the output head."""
    reg = regime(version)
    targets = config.get("target_modules")
    if is_all_linear(targets, version):
        linear = [name] if linear is None else linear
        targets = [m for m in linear if not is_output_head(config, m)]
    if excluded(config, name, version):
        return False
    if isinstance(targets, str):
        return bounded.fullmatch(targets, name)
    if not isinstance(targets, (list, tuple, set, frozenset)):
        return False
    plain, patterned = _split_entries(tuple(t for t in targets if isinstance(t, str)))
    if reg.exact_skips_layers and (name in plain or name in patterned):
        return True
    if not (_plain_hit(reg.entry, plain, name) or any(_entry_hit(reg.entry, t, name) for t in patterned)):
        return False
    return _in_layers(config, name, reg)


# Characters that make a list entry a pattern in the releases that interpolate entries into a regex.
REGEX_CHARS = frozenset(".^$*+?{}[]\\|()")


@functools.lru_cache(maxsize=64)
def _split_entries(entries: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """List entries without regex characters (the usual "q_proj"), looked up by set; the rest one by one.
    A list of 100,000 entries against 1,000 modules stays linear instead of 10^8 regex matches."""
    plain = frozenset(e for e in entries if REGEX_CHARS.isdisjoint(e))
    return plain, frozenset(entries) - plain


def _plain_hit(how: str, plain: frozenset[str], name: str) -> bool:
    """_entry_hit for entries without regex characters, by set lookup: for them `.*\\.entry$` is exactly
    "name ends with '.' + entry"; "endswith" is any suffix of the name."""
    if not plain:
        return False
    if how == "endswith":
        return any(name[i:] in plain for i in range(len(name) + 1))
    parts = name.split(".")
    return any(".".join(parts[i:]) in plain for i in range(len(parts)))


def _entry_hit(how: str, entry: str, name: str) -> bool:
    if how == "endswith":
        return name.endswith(entry)
    if how == "regex":
        return name == entry or bounded.match(rf".*\.{entry}$", name) is not None
    return name == entry or name.endswith("." + entry)


def _in_layers(config: Mapping[str, Any], name: str, reg: Regime) -> bool:
    wanted = config.get("layers_to_transform")
    if not reg.layers or wanted is None or (wanted == [] and not reg.empty_layers_filter):
        return True
    pattern = config.get("layers_pattern")
    if pattern == [] and reg.default_layer_regex is None:
        return True  # 0.4-0.7 loop over no pattern at all and leave the verdict as it was
    index = layer_index(name, pattern, reg)
    if index is None:
        return False
    if isinstance(wanted, int):
        return index == wanted
    if not isinstance(wanted, (list, tuple, set, frozenset, dict)):  # peft: `3 in "abc"` raises TypeError
        raise ValueError(f"layers_to_transform {wanted!r} is neither a layer index nor a list of them")
    return index in wanted


def layer_index(name: str, layers_pattern: Any, reg: Regime) -> Optional[int]:
    """The layer index peft reads from `name` (None: no index found, so the module is not kept)."""
    if not layers_pattern and reg.default_layer_regex is not None:
        return _index(bounded.match(reg.default_layer_regex, name), reg)
    patterns = COMMON_LAYERS_PATTERN if layers_pattern is None else layers_pattern
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        found = bounded.match(reg.layer_regex.format(pattern=pattern), name)
        if found is not None:
            return _index(found, reg)
    return None


def _index(found: Optional[bounded.Groups], reg: Regime) -> Optional[int]:
    if found is None:
        return None
    return int(found[reg.idx_group])  # ValueError where a layers_pattern group shifted group 1, as in peft


def excluded(config: Mapping[str, Any], name: str, version: Version) -> bool:
    """exclude_modules (0.14.0 on) and, from 0.16.0, modules_to_save: never given an adapter layer."""
    reg = regime(version)
    exclude = config.get("exclude_modules")
    if reg.exclude_modules and exclude:
        if isinstance(exclude, str):
            if bounded.fullmatch(exclude, name):
                return True
        elif not isinstance(exclude, (list, tuple, set, frozenset, dict)):  # peft: `key in 2.4e-11` raises TypeError
            raise ValueError(f"exclude_modules {exclude!r} is neither a pattern nor a list of names")
        elif name in exclude or any(name.endswith(f".{e}") for e in exclude if isinstance(e, str)):
            return True
    saved = config.get("modules_to_save")
    return bool(reg.excludes_modules_to_save and saved and isinstance(saved, list) and any(
        bounded.match(rf"(^|.*\.){m}($|\..*)", name) for m in saved if isinstance(m, str)))


def saves(name: str, modules_to_save: Any) -> bool:
    """Whether modules_to_save makes a trainable copy of module `name` (_set_trainable: a suffix)."""
    return isinstance(modules_to_save, list) and any(
        isinstance(m, str) and m and name.endswith(m) for m in modules_to_save)


def saved_by(key: str, modules_to_save: Any) -> bool:
    """Whether a parameter `key` ("classifier.out_proj.weight") lies in a module modules_to_save copies."""
    parts = key.split(".")
    return any(saves(".".join(parts[:i]), modules_to_save) for i in range(1, len(parts)))


def declared_names(config: Mapping[str, Any], key: str = "target_modules") -> Optional[frozenset[str]]:
    """The last names of the modules `key` (target_modules or modules_to_save) names when the config
    alone says (a list); None when only the base can tell (a regex string, or all-linear)."""
    value = config.get(key)
    if not isinstance(value, list):
        return None
    return frozenset(t.rsplit(".", 1)[-1] for t in value if isinstance(t, str))


def pattern_errors(config: Mapping[str, Any], version: Version,
                   known: Collection[str] = ()) -> list[tuple[str, str, str]]:
    """(config key, the value as written, re's message) for each regex of the config that Python's `re`
    refuses to compile in the form peft `version` builds it: peft raises re.error (or RecursionError)
    while it builds the adapter's layers. The regexes are the ones the functions above evaluate for that
    release: a target_modules or exclude_modules string, list entries in 0.5.x, layers_pattern entries when
    layers_to_transform is set, modules_to_save entries from 0.16.0, rank_pattern / alpha_pattern keys.
    `known`: the keys the release's config class knows, when given (a key it drops builds no regex)."""
    reg = regime(version)
    wanted: list[tuple[str, str, str]] = []  # (key, value, regex)
    targets = config.get("target_modules")
    if isinstance(targets, str) and not is_all_linear(targets, version):
        wanted.append(("target_modules", targets, targets))
    elif isinstance(targets, list) and reg.entry == "regex":
        entries = _split_entries(tuple(t for t in targets if isinstance(t, str)))[1]
        wanted += [("target_modules", t, rf".*\.{t}$") for t in sorted(entries)]
    exclude = config.get("exclude_modules")
    if reg.exclude_modules and isinstance(exclude, str) and exclude:
        wanted.append(("exclude_modules", exclude, exclude))
    layers = config.get("layers_pattern")
    if reg.layers and config.get("layers_to_transform") is not None and layers:
        wanted += [("layers_pattern", p, reg.layer_regex.format(pattern=p))
                   for p in ([layers] if isinstance(layers, str) else layers if isinstance(layers, list) else [])
                   if isinstance(p, str)]
    saved = config.get("modules_to_save")
    if reg.excludes_modules_to_save and isinstance(saved, list):
        wanted += [("modules_to_save", m, rf"(^|.*\.){m}($|\..*)") for m in saved if isinstance(m, str)]
    for key in ("rank_pattern", "alpha_pattern"):
        if isinstance(config.get(key), dict):
            wanted += [(key, k, patterns.key_regex(k, version)) for k in config[key]]
    return [(key, value, problem) for key, value, regex in dict.fromkeys(wanted)
            if (not known or key in known) and (problem := _refused_by_re(regex)) is not None]


@functools.lru_cache(maxsize=65536)
def _refused_by_re(regex: str) -> Optional[str]:
    """re's message when it refuses to compile `regex` (asked once per regex across the 36 releases)."""
    try:
        re.compile(regex)
    except re.error as exc:
        return str(exc.msg)
    except (RecursionError, OverflowError) as exc:  # parentheses nested thousands deep; huge repeat counts
        return f"{type(exc).__name__}: {exc}"
    return None


def parameter_wrapped(config: dict[str, Any], module: str) -> bool:
    """Whether a saved module path is one of the ParamWrappers peft (0.17+) builds for `target_parameters`: the
    module holding a targeted parameter (`mlp.experts` for `mlp.experts.gate_up_proj`), or one of its nested
    `.base_layer`s (a module with several targeted parameters wraps one around the other). peft matches each
    entry as a dotted suffix of `<module>.<parameter>`."""
    targets = config.get("target_parameters")
    if not isinstance(targets, list):
        return False
    while module.endswith(".base_layer"):
        module = module[:-len(".base_layer")]
    holders = {t.rpartition(".")[0] for t in targets if isinstance(t, str)}
    return any(h and (module == h or module.endswith("." + h)) for h in holders)
