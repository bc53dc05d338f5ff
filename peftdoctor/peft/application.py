"""What a peft release applies of a saved LoRA adapter, tensor by tensor, against its base's module tree.

`PeftModel.from_pretrained` ends in `set_peft_model_state_dict` (peft/utils/save_and_load.py): it maps each
saved key to a parameter name of the PeftModel (`lora_A.weight` -> `lora_A.default.weight`), then calls
`load_state_dict(peft_model, strict=False)` in every release. Whatever key names no parameter of the
PeftModel is dropped without a word, and whatever adapter parameter no key names keeps its initial value:
lora_B is zero, so the module computes the base, unless `init_lora_weights` is false (A and B random: the
outputs change at random). So a tensor applies only when

- its key carries the PeftModel prefix `base_model.model.` once (no prefix, or a doubled one: dropped);
- it was saved by save_pretrained, without the adapter name: before 0.21.0 `_insert_adapter_name_into_state_dict`
  makes `lora_A.default.weight` into `lora_A.default.default.weight` (dropped); from 0.21.0
  `_remap_adapter_state_dict_for_load` maps the model's own keys back and passes any other key through, so a
  key holding the loaded adapter's name (`default`) loads as it is, and any other name is dropped;
- its module path, after the renames the (peft, transformers) pair applies (peft/transformers_axis.py),
  is a module of the base (peft/architectures.py: the model class of the adapter's task, or the bare
  model under it);
- the config targets that module in this release (peft/targeting.py): else peft builds no layer there;
- its role fits the layer peft builds: an embedding reads lora_embedding_A/B, any other layer lora_A/B;
- DoRA's magnitude is named as the release reads it: 0.9-0.11 only `lora_magnitude_vector` (a
  Parameter), 0.12.0 on both that and `lora_magnitude_vector.weight` (the refactor's key rewrite).

A modules_to_save copy the file lacks keeps the base's module before 0.15.0; from 0.15.0 the wrappers' load
map (`adapter_state_dict_load_map`) indexes the file by it and raises KeyError.

Release differences are the data in `_BEHAVIOURS`; tests/test_application.py reads them from the wheels.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from packaging.version import Version

from peftdoctor.peft import architectures, targeting, tensor_names, transformers_axis
from peftdoctor.peft.architectures import Architecture
from peftdoctor.peft.tensor_names import TensorName

LORA_KINDS = frozenset({"Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d"})  # peft builds a LoRA layer on these
EMBEDDING_ROLES = frozenset({"lora_embedding_A", "lora_embedding_B"})
MAX_LAYERS = 4096  # a hostile config.json cannot make the module list grow without bound
# config.json attributes that count the layers of a one-stack model; others leave the indices unchecked
LAYER_COUNTS = ("num_hidden_layers", "n_layer")


@dataclass(frozen=True)
class Behaviour:
    """How releases from `since` on load a saved adapter, where they differ."""

    since: Version
    dora_params: frozenset[str]  # the params of lora_magnitude_vector a release loads ("": a bare Parameter)
    warns_missing: bool  # PeftModel.from_pretrained warns "Found missing adapter keys while loading the checkpoint"
    named_keys_load: bool  # a key holding the loaded adapter's name ("default") loads as it is
    copies_required: bool  # a modules_to_save copy missing from the file raises KeyError (else the base's is kept)


_BEHAVIOURS = (  # newest first
    Behaviour(Version("0.21.0"), frozenset({"", "weight"}), True, True, True),
    Behaviour(Version("0.15.0"), frozenset({"", "weight"}), True, False, True),
    Behaviour(Version("0.14.0"), frozenset({"", "weight"}), True, False, False),
    Behaviour(Version("0.12.0"), frozenset({"", "weight"}), False, False, False),
    Behaviour(Version("0.0"), frozenset({""}), False, False, False),
)
LOADED_NAME = "default"  # the adapter name PeftModel.from_pretrained loads under unless told otherwise


def behaviour(version: Version) -> Behaviour:
    return next(b for b in _BEHAVIOURS if version >= b.since)


@dataclass(frozen=True)
class Tree:
    """The base's module tree as the loaded model names it, and where it came from (said in every finding)."""

    arch: Architecture
    source: str
    layers: Optional[int] = None  # the layer count config.json gives (indices 0..layers-1), when it gives one

    @functools.cached_property
    def bare_prefix(self) -> Optional[str]:
        """The attribute the task class keeps the bare model under (`model.`, `transformer.`): AutoModel
        (task_type None, FEATURE_EXTRACTION) names every module without it."""
        first = (self.arch.input_embeddings or "").split(".")[0]
        return first + "." if first and "." in (self.arch.input_embeddings or "") else None

    def resolve(self, module: str, bare: bool) -> Optional[str]:
        """The folded table name of `module` in the class form (or the bare model's), None when the base has no
        such module (an index past the layer count included)."""
        folded = architectures.fold(module)
        name = (self.bare_prefix or "") + folded if bare else folded
        if name not in self.arch.entry["modules"]:
            return None
        if self.layers is not None and folded.count("{i}") == 1:
            index = _first_index(module)
            if index is not None and index >= self.layers:
                return None
        return name

    def kind(self, name: str) -> str:
        return str(self.arch.entry["modules"][name][0])


def _first_index(module: str) -> Optional[int]:
    found = re.search(r"(?:^|\.)(\d+)(?:\.|$)", module)
    return int(found.group(1)) if found else None


def tree_for(config: Mapping[str, Any], source: str, sized: bool = True,
             transformers: Optional[str] = None) -> Optional[Tree]:
    """The module tree of a base's config.json as transformers `transformers` builds it (None: the newest
    table); sized: its layer count read too."""
    arch = architectures.for_config(dict(config), transformers)
    if arch is None:
        return None
    count = next((config[k] for k in LAYER_COUNTS if isinstance(config.get(k), int) and not isinstance(
        config.get(k), bool)), None) if sized and not config.get("is_encoder_decoder") else None
    return Tree(arch, source, count if count is not None and 0 < count <= MAX_LAYERS else None)


# Words a model name may hold after its family beside sizes and versions; any other word (vision, vl, coder,
# math, ...) may be another architecture of that family, so the name is not taken to say the architecture.
_PLAIN_WORDS = frozenset({"hf", "chat", "instruct", "base", "it", "uncased", "cased", "small", "medium", "large",
                          "xl", "mini", "tiny"})


def family_of(name: Any) -> Optional[str]:
    """The model_type a hub id names plainly (`meta-llama/Llama-2-7b-hf` -> llama, `microsoft/Phi-3-mini` ->
    phi3, `gpt2-medium` -> gpt2), or None when the name could be anything else: conservative on purpose."""
    if not isinstance(name, str) or not name or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    words = re.split(r"[-_]", name.rsplit("/", 1)[-1].lower())
    family, rest = words[0], words[1:]
    if architectures.entry(family) is None or any(
            not any(c.isdigit() for c in w) and w not in _PLAIN_WORDS for w in rest):
        return None
    if rest and re.fullmatch(r"\d+", rest[0]) and architectures.entry(family + rest[0]) is not None:
        return family + rest[0]  # Phi-3 is phi3, gemma-2 is gemma2; Llama-2 stays llama
    return family


@dataclass(frozen=True)
class Placement:
    """Where one saved tensor goes in one release: the module it applies to, or why peft drops it."""

    name: TensorName
    module: str  # the module path after the renames, without the PeftModel prefix
    ignored: Optional[str] = None  # one of the REASONS keys; None: applied
    size: int = 0  # elements


REASONS = {
    "no-prefix": "saved without the base_model.model. prefix",
    "doubled-prefix": "saved with the base_model.model. prefix twice",
    "adapter-name": "saved with the adapter name in the key (a state_dict() copy, not save_pretrained)",
    "not-in-base": "no module of that path in the base",
    "not-targeted": "target_modules does not select the module, so peft builds no LoRA layer there",
    "embedding-role": "the module is an embedding, whose LoRA peft reads from lora_embedding_A/B",
    "linear-role": "the module is not an embedding, whose LoRA peft reads from lora_A/B",
    "dora-name": "this release reads DoRA's magnitude as lora_magnitude_vector (without .weight)",
}


@dataclass(frozen=True)
class Application:
    """What one release applies of the adapter's LoRA tensors on one base (or without one: tree is None)."""

    placements: tuple[Placement, ...]
    unweighted: tuple[str, ...]  # modules the release adapts that no applied tensor fills
    random: bool  # those get random LoRA weights (init_lora_weights false), else they compute the base
    tree: Optional[Tree]

    @property
    def ignored(self) -> tuple[Placement, ...]:
        return tuple(p for p in self.placements if p.ignored)

    @property
    def share(self) -> str:
        """'12 of 16 LoRA tensors (3,072 of 4,096 parameters)'."""
        applied = [p for p in self.placements if not p.ignored]
        return (f"{len(applied)} of {len(self.placements)} LoRA tensors ({sum(p.size for p in applied):,} of "
                f"{sum(p.size for p in self.placements):,} parameters)")

    @property
    def verdict(self) -> str:
        """ok (the whole adapter), partial, base (nothing applied), or random (modules with random weights)."""
        if self.unweighted and self.random:
            return "random"
        if self.placements and len(self.ignored) == len(self.placements):
            return "base"
        return "partial" if self.ignored or self.unweighted else "ok"


def apply(tensors: Mapping[str, TensorName], sizes: Mapping[str, int], config: Mapping[str, Any],
          tree: Optional[Tree], version: Version, transformers: Optional[str] = None) -> Application:
    """The Application of a LoRA adapter's tensors (`tensors`: the saved names as parsed, `sizes`: their
    element counts) by peft `version` under `transformers` on `tree` (None: the base is unknown, so module
    paths and embeddings are not judged)."""
    lora = {k: n for k, n in tensors.items() if n.family in ("lora", "dora")}
    model_type = tree.arch.model_type if tree is not None else None
    rules = transformers_axis.renames(str(version), transformers, model_type) if transformers else ()
    paths = {k: _renamed(_unwrapped(n.module), rules) for k, n in lora.items()}
    bare = tree is not None and tree.bare_prefix is not None and sum(
        tree.resolve(p, True) is not None for p in paths.values()) > sum(
        tree.resolve(p, False) is not None for p in paths.values())
    modules = _modules(tree, bare, paths.values(), config.get("task_type")) if tree is not None else []
    linear = [p for p, kind in modules if kind in ("Linear", "Conv1D")] if tree is not None else None
    narrowed = _narrowed(config, {*paths.values(), *(p for p, _ in modules)})
    chosen = {m: adapts(narrowed, m, version, linear) or _holds_target_parameter(config, m)
              for m in set(paths.values())}
    placements = tuple(Placement(n, paths[k], _why(n, paths[k], chosen[paths[k]], tree, bare, version), sizes.get(k, 0))
                       for k, n in lora.items())
    unweighted = _unweighted(placements, narrowed, modules, version, linear) if tree is not None and lora else ()
    return Application(placements, unweighted, config.get("init_lora_weights") is False, tree)


def _narrowed(config: Mapping[str, Any], names: Collection[str]) -> Mapping[str, Any]:
    """The config with only the target_modules entries that can select one of `names`: a plain entry (no regex
    characters) selects a module only as a suffix of its path in every release, so the others are left out
    before the 36 releases' matchers run (a 50,000-entry list against 2,000 tensors took 108 s)."""
    targets = config.get("target_modules")
    if not isinstance(targets, list) or len(targets) < 64 or sum(map(len, names)) > 2_000_000:
        return config  # (a short list costs nothing to match; a huge header would cost more to index)
    suffixes = {name[i:] for name in names for i in range(len(name))}
    return {**config, "target_modules": [t for t in targets if isinstance(t, str) and (
        not targeting.REGEX_CHARS.isdisjoint(t) or t in suffixes)]}


def _unwrapped(module: str) -> str:
    """The module path without the `.base_layer` of nested wrappers (several target_parameters on one module
    nest ParamWrappers; peft matches them by strip_base_layer_from_name)."""
    return module.replace(".base_layer", "") if ".base_layer" in module else module


def _holds_target_parameter(config: Mapping[str, Any], module: str) -> bool:
    """Whether target_parameters (0.17.0 on: LoRA on a parameter, e.g. fused MoE experts) names a parameter of
    `module`: an entry `<module>.<param>` equal to its path or a dotted suffix of it (BaseTuner._inject_parameters)."""
    wanted = config.get("target_parameters")
    if not isinstance(wanted, list):
        return False
    owners = {t.rpartition(".")[0] for t in wanted if isinstance(t, str)}
    return any(module == o or module.endswith("." + o) for o in owners if o)


def _renamed(module: str, rules: tuple[transformers_axis.Rename, ...]) -> str:
    for rule in rules:
        module = re.sub(rule.pattern, rule.replacement, module)
    return module


def _why(name: TensorName, module: str, targeted: bool, tree: Optional[Tree], bare: bool,
         version: Version) -> Optional[str]:
    if not name.prefixed:
        return "no-prefix"
    if name.prefix_doubled:
        return "doubled-prefix"
    if name.adapter_name is not None and not (behaviour(version).named_keys_load and name.adapter_name == LOADED_NAME):
        return "adapter-name"
    resolved = tree.resolve(module, bare) if tree is not None else None
    if tree is not None and resolved is None:
        return "not-in-base"
    if not targeted:
        return "not-targeted"
    embedding = tree is not None and resolved is not None and tree.kind(resolved) == "Embedding"
    if resolved is not None and name.family == "lora" and embedding != (name.role in EMBEDDING_ROLES):
        return "linear-role" if name.role in EMBEDDING_ROLES else "embedding-role"
    if name.family == "dora" and name.param not in behaviour(version).dora_params:
        return "dora-name"
    return None


def adapts(config: Mapping[str, Any], module: str, version: Version, linear: Optional[Collection[str]]) -> bool:
    """targeting.targeted, where a pattern peft cannot evaluate counts as a match (PD118 says peft fails)."""
    try:
        return targeting.targeted(config, module, version, linear)
    except targeting.PROBLEMS:
        return True


def _indices(tree: Tree, paths: Collection[str]) -> list[str]:
    """The layer indices to expand `{i}` with: the base's count, else the ones the saved paths use."""
    if tree.layers is not None:
        return [str(i) for i in range(tree.layers)]
    seen = {i for p in paths if (i := _first_index(p)) is not None and i < MAX_LAYERS}
    return [str(i) for i in sorted(seen or {0})]


def _modules(tree: Tree, bare: bool, paths: Collection[str], task_type: Any) -> list[tuple[str, str]]:
    """(module path, kind) of every module of the base peft can put a LoRA layer on, layer indices expanded
    (names with several indices, such as experts, keep only the layer's)."""
    out = []
    indices = _indices(tree, paths)
    strip = len(tree.bare_prefix or "") if bare else 0
    for name, (kind, dims) in tree.arch.entry["modules"].items():
        if kind not in LORA_KINDS or (bare and not name.startswith(tree.bare_prefix or "")):
            continue
        if dims is None and name in targeting.SEQ_CLS_HEADS and task_type != "SEQ_CLS":
            continue  # the sequence-classification class's head, which the generator adds beside the model's
        path = name[strip:]
        if path.count("{i}") > 1:
            continue
        out += [(path.replace("{i}", i), kind) for i in indices] if "{i}" in path else [(path, kind)]
    return out


def _unweighted(placements: tuple[Placement, ...], config: Mapping[str, Any], modules: list[tuple[str, str]],
                version: Version, linear: Optional[Collection[str]]) -> tuple[str, ...]:
    """Modules the release adapts that get no A and B from the file (peft initialises them instead)."""
    roles: dict[str, set[str]] = {}
    for p in placements:
        if not p.ignored and p.name.family == "lora" and p.name.param in ("weight", ""):
            roles.setdefault(p.module, set()).add("A" if p.name.role in tensor_names.A_ROLES else "B")
    return tuple(path for path, _ in modules
                 if _targeted_strictly(config, path, version, linear) and roles.get(path) != {"A", "B"})


def _targeted_strictly(config: Mapping[str, Any], module: str, version: Version,
                       linear: Optional[Collection[str]]) -> bool:
    try:
        return targeting.targeted(config, module, version, linear)
    except targeting.PROBLEMS:
        return False


def guessed_tree(config: Mapping[str, Any], transformers: Optional[str] = None) -> Optional[Tree]:
    """The module tree of the family base_model_name_or_path names, when no config.json of the base is at hand."""
    name = config.get("base_model_name_or_path")
    family = family_of(name)
    if family is None:
        return None
    tree = tree_for({"model_type": family}, "", sized=False, transformers=transformers)
    if tree is None:
        return None
    return Tree(tree.arch, f"the modules of model_type {family!r} ({tree.arch.entry['class']}, transformers "
                           f"{transformers or architectures.transformers_version()}), the family "
                           f"base_model_name_or_path {name!r} "
                           "names: its config.json was not found")


def short(modules: Collection[str], limit: int = 3) -> str:
    shown = list(modules)[:limit]
    more = len(modules) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
