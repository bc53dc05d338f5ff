"""`fix`: a rewrite plan that makes adapter_config.json load under a target peft release
without changing what the adapter computes, or a refusal that says why it cannot.

The plan is plain data computed from the schemas of the releases and the adapter's own weight
names; `apply` writes it (atomically, with a backup). Each rewriter below handles one kind of
difference and is either exact or refuses.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from packaging.version import Version

from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.atomic import Snapshot, WriteRefused, Written, clean_leftovers, replace_text
from peftdoctor.model.adapter import CONFIG_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.model.findings import Finding, Severity
from peftdoctor.ops.check import choose_for_engine
from peftdoctor.peft import compat, patterns, releases, targeting
from peftdoctor.peft import semantics as keys
from peftdoctor.peft.releases import Release
from peftdoctor.rules.schema import plainly_valid
from peftdoctor.rules.weights import lora_modules


@dataclass(frozen=True)
class Change:
    """One key rewritten: dropped (after is absent), set, or added (before is absent)."""

    key: str
    action: str  # "drop", "set" or "add"
    reason: str
    before: Any = None
    after: Any = None
    forced: bool = False  # made only because --force overrode a refusal: the meaning changes


@dataclass(frozen=True)
class Refusal:
    key: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """What `fix` would do to one adapter for one target release."""

    path: str
    config_path: str
    target: str
    written_by: Optional[str]
    original: dict[str, Any]
    result: dict[str, Any]
    changes: tuple[Change, ...]
    refusals: tuple[Refusal, ...]
    notes: tuple[Finding, ...] = ()
    snapshot: Optional[Snapshot] = None  # the config file's bytes as read, to detect concurrent edits
    remaining: tuple[Finding, ...] = ()  # errors a check of the rewritten adapter still finds: no rewrite repairs them

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def changed(self) -> bool:
        return self.result != self.original or list(self.result) != list(self.original)


@dataclass
class _Work:
    """The config being rewritten, and what has been said about it so far."""

    config: dict[str, Any]
    target: Release
    source: Version  # the release whose semantics the config was written for
    modules: Optional[list[str]]  # LoRA module names from the weights, when they could be read
    force: bool
    fold_rslora: bool = False  # a serving engine ignores use_rslora: fold it even where peft knows it
    changes: list[Change] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    refused_keys: set[str] = field(default_factory=set)  # a set, not a scan of refusals: 64k keys stay linear

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type"))

    def knows(self, key: str) -> bool:
        return key in self.target.fields(self.peft_type)

    def drop(self, key: str, reason: str, forced: bool = False) -> None:
        self.changes.append(Change(key, "drop", reason, before=self.config.pop(key), forced=forced))

    def set(self, key: str, value: Any, reason: str) -> None:
        action = "set" if key in self.config else "add"
        self.changes.append(Change(key, action, reason, before=self.config.get(key), after=value))
        self.config[key] = value

    def refuse(self, key: str, reason: str) -> None:
        """Refuse, or with --force drop the key anyway and say that the meaning changes."""
        if key in self.refused_keys:
            return  # one reason per key: the first rewriter that could not express it says why
        self.refused_keys.add(key)
        if self.force and key in self.config:
            self.drop(key, f"FORCED: {reason}", forced=True)
        else:
            self.refusals.append(Refusal(key, reason))


def _positive(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value) and value > 0
    return isinstance(value, int) and not isinstance(value, bool) and value > 0  # math.isfinite(10**400) raises


def _scaled(alpha: Any, rank: Any) -> Optional[float]:
    """alpha * sqrt(rank) as a finite float, or None where it cannot be written as standard JSON:
    huge ints overflow a float, and 1e308 * 2 is infinite (strict JSON readers reject Infinity)."""
    if not (_positive(alpha) and _positive(rank)):
        return None
    try:
        value = alpha * math.sqrt(rank)
    except OverflowError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _number(value: float) -> Any:
    return int(value) if float(value).is_integer() else value


def rslora_to_alpha(work: _Work) -> None:
    """use_rslora=true scales by alpha/sqrt(r); plain LoRA by alpha/r. alpha*sqrt(r) makes them equal."""
    if work.config.get("use_rslora") is not True or (work.knows("use_rslora") and not work.fold_rslora):
        return
    unknown_to = "the serving engine" if work.knows("use_rslora") else f"peft {work.target.name}"
    r, alpha = work.config.get("r", 8), work.config.get("lora_alpha", 8)
    folded = _scaled(alpha, r)
    if folded is None:
        return work.refuse("use_rslora", "r and lora_alpha must be positive numbers whose lora_alpha*sqrt(r) "
                                         "is a finite JSON number to fold rsLoRA's scaling")
    has_patterns = bool(work.config.get("rank_pattern") or work.config.get("alpha_pattern"))
    if not has_patterns:
        work.set("lora_alpha", _number(folded),
                 f"rsLoRA folded in: lora_alpha/r now equals the rsLoRA scaling {alpha}/sqrt({r})")
        return work.drop("use_rslora", f"{unknown_to} has no rsLoRA; its scaling is in lora_alpha")
    if work.modules is None:
        return work.refuse("use_rslora", f"folding rsLoRA into per-module alphas needs {SAFETENSORS_NAME} "
                                          "to name the modules")
    if not (work.knows("rank_pattern") and work.knows("alpha_pattern")):
        return work.refuse("use_rslora", f"peft {work.target.name} has no alpha_pattern to carry per-module "
                                          "rsLoRA scalings")
    values = patterns.module_values(work.config, work.modules, work.source)
    wanted = {m: (rank, _scaled(a, rank)) for m, (rank, a) in values.items()}
    if any(a is None for _rank, a in wanted.values()):
        return work.refuse("use_rslora", "every rank_pattern and alpha_pattern value must be a positive number "
                                         "(ranks integers) whose alpha*sqrt(rank) is a finite JSON number")
    global_alpha = _number(folded)
    # Every module whose rank or alpha differs from the global ones gets its own exact key in both
    # patterns, so each release's matching rule (one shared key before 0.14) lands on it.
    odd = {m: v for m, v in wanted.items() if v[0] != r or not math.isclose(v[1], global_alpha, rel_tol=1e-12)}
    rewritten = dict(work.config, lora_alpha=global_alpha,
                     rank_pattern={m: v[0] for m, v in odd.items()},
                     alpha_pattern={m: _number(v[1]) for m, v in odd.items()})
    got = patterns.module_values(rewritten, work.modules, work.target.version)
    if any(got[m][0] != v[0] or not math.isclose(got[m][1], v[1], rel_tol=1e-12) for m, v in wanted.items()):
        return work.refuse("use_rslora", f"peft {work.target.name}'s pattern matching cannot single out every "
                                          "module of this adapter")
    work.set("lora_alpha", global_alpha, f"rsLoRA folded in: lora_alpha {alpha} * sqrt(r={r})")
    work.set("rank_pattern", rewritten["rank_pattern"], "one exact key per module whose rank differs")
    work.set("alpha_pattern", rewritten["alpha_pattern"], "each module's rsLoRA scaling folded into its alpha")
    work.drop("use_rslora", f"{unknown_to} has no rsLoRA; its scaling is in the alphas")


def explicit_targets(work: _Work) -> None:
    """'all-linear' and exclude_modules become the list of modules the weights were trained for."""
    targets = work.config.get("target_modules")
    all_linear = targeting.names_all_linear(targets) and not targeting.is_all_linear(targets, work.target.version)
    excluding = work.config.get("exclude_modules") not in (None, [], "") and not work.knows("exclude_modules")
    if not (all_linear or excluding):
        return
    what = "target_modules 'all-linear'" if all_linear else "exclude_modules"
    if not work.modules:
        return work.refuse("target_modules" if all_linear else "exclude_modules",
                           f"{what} can only be spelled out from {SAFETENSORS_NAME}'s module names")
    work.set("target_modules", sorted(work.modules),
             f"{what} spelled out as the {len(work.modules)} modules the weights hold")
    if excluding:
        work.drop("exclude_modules", "its effect is in the explicit target_modules")


def legacy_merged_linear(work: _Work) -> None:
    """enable_lora (MergedLinear, before peft 0.3) has a weight layout newer releases cannot load."""
    if work.config.get("enable_lora") not in (None, []) and not work.knows("enable_lora"):
        work.refuse("enable_lora", "MergedLinear adapters (enable_lora) store fused weights that peft "
                                   f"{work.target.name} cannot load; re-train or split the weights")


def retyped_values(work: _Work) -> None:
    """Values of a type the target rejects, where an exact conversion exists (or they are init-only)."""
    for key in list(work.config):
        prop = work.target.fields(work.peft_type).get(key)
        value = work.config[key]
        if prop is None or _valid(value, prop):
            continue
        for convert, why in () if key in _REGEX_KEYS else _CONVERSIONS:
            converted = convert(value)
            if converted is not _NO and _valid(converted, prop):
                work.set(key, converted, why)
                break
        else:
            if key in keys.INIT_ONLY_KEYS and not compat.is_base_mutating(value) and "default" in prop:
                work.set(key, prop["default"], "initialisation only: the trained weights replace it, and "
                                               f"peft {work.target.name} does not accept {value!r}")
            else:
                work.refuse(key, f"peft {work.target.name} does not accept {key}={value!r}")


_NO = object()
# A string here is a regex peft fullmatches against module names, a list a set of name suffixes:
# "q_proj" and ["q_proj"] select different modules, so neither spelling converts to the other.
_REGEX_KEYS = frozenset({"target_modules", "exclude_modules", "feedforward_modules"})
_CONVERSIONS: tuple[tuple[Callable[[Any], Any], str], ...] = (
    (lambda v: v[0] if isinstance(v, list) and len(v) == 1 else _NO, "a one-element list becomes its element"),
    (lambda v: [v] if isinstance(v, (str, int)) and not isinstance(v, bool) else _NO,
     "a single value becomes a one-element list"),
)


def _valid(value: Any, prop: dict[str, Any]) -> bool:
    if plainly_valid(value, prop):
        return True
    # A float where an int is annotated (lora_alpha * sqrt(r)) loads and computes exactly: peft's
    # dataclasses do not enforce annotations. `check` still notes it (PD104, a warning).
    kinds = prop.get("type") if isinstance(prop.get("type"), list) else [prop.get("type")]
    if isinstance(value, float) and "integer" in kinds:
        return True
    from jsonschema import Draft202012Validator  # only for the rare keywords the plain look leaves open

    return Draft202012Validator(prop).is_valid(value)


def unknown_keys(work: _Work) -> None:
    """Keys the target does not know: drop no-ops, refuse the rest."""
    for key in [k for k in work.config if not work.knows(k)]:
        noop = compat.noop_reason(work.config, key)
        if noop:
            work.drop(key, f"unknown to peft {work.target.name}; a no-op ({noop})")
        else:
            span = compat.history(work.peft_type, key)
            needs = f"; peft>={span.first} knows it" if span.known and not span.legacy else ""
            work.refuse(key, f"peft {work.target.name} cannot express it: "
                             f"{keys.LOSS_IF_DROPPED.get(key, keys.DEFAULT_LOSS)}{needs}")


def standard_json(work: _Work) -> None:
    """NaN and Infinity are not JSON (strict readers reject them): nothing fix writes may hold one."""
    if not work.changes:
        return  # nothing will be written: the file stays as its owner wrote it
    for key in [k for k, v in work.config.items() if not _finite(v)]:
        work.refuse(key, f"{key} holds NaN or Infinity, which standard JSON cannot hold")


def _finite(value: Any) -> bool:
    stack = [value]
    while stack:  # a loop, not recursion: a config nested 1,000 deep must not raise RecursionError
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def load_refusals(work: _Work) -> None:
    for peft_type, missing_key, since, _error in keys.LOAD_REFUSALS:
        if work.peft_type == peft_type and missing_key not in work.config and work.target.version >= Version(since):
            work.refusals.append(Refusal(missing_key, f"{peft_type} weights saved before peft {since} are "
                                                      f"incompatible with peft {work.target.name}: no rewrite helps"))


# Order matters: exact equivalences first, then type repairs, then what is left is dropped or refused.
REWRITERS: tuple[Callable[[_Work], None], ...] = (
    load_refusals, legacy_merged_linear, rslora_to_alpha, explicit_targets, retyped_values, unknown_keys,
    standard_json,
)


def _module_names(adapter: Adapter) -> Optional[list[str]]:
    return sorted(lora_modules(adapter)) if adapter.header is not None else None


# Keys that carry one feature together: the engine tables name only the first.
_FEATURE_KEYS = {"rank_pattern": ("rank_pattern", "alpha_pattern")}


def plan(target: Union[str, Adapter], peft: Optional[str] = None, force: bool = False,
         serve: Optional[str] = None, max_lora_rank: Optional[int] = None, base: Optional[str] = None) -> Plan:
    """The rewrite that makes the adapter at `target` (a path, a cached repo id, or an Adapter already
    read) load under `peft` (default: the installed one) and, with `serve` ("vllm", "sglang==0.4.0",
    ...), compute the same under that engine (started with `max_lora_rank`, when given); `base` (a directory
    or repo id): the base it is checked against after the rewrite (default: base_model_name_or_path)."""
    engine = None
    if serve is not None:
        from peftdoctor import engines as targets  # only when asked: its tables are not free to load

        engine = targets.parse_target(serve)
    adapter = target if isinstance(target, Adapter) else open_adapter(target)
    if adapter.kind != "peft-adapter" or adapter.config is None:
        why = adapter.config_error or f"is not a PEFT adapter ({adapter.kind})"
        shown = adapter.display
        raise UnusableInput(f"{shown}: {CONFIG_NAME} {why}" if adapter.config_error else f"{shown} {why}")
    release, notes = choose_for_engine(peft, engine)
    config = adapter.config
    snapshot = Snapshot(adapter.config_digest or "", adapter.config_text or "")
    written = compat.written_by(config)
    source = written.exact if written is not None and written.exact else releases.known_versions()[-1]
    work = _Work(dict(config), release, source, _module_names(adapter), force)
    if engine is not None:
        notes += targets.stand_in_notes(engine)
        header = adapter.header
        work.fold_rslora = "fold_rslora" in targets.rewrites_for(engine, config, header)
        for key, reason in targets.refusals_for(engine, config, header):
            # An engine names one key per feature; --force must drop all of it, or a second run refuses again.
            for part in [k for k in _FEATURE_KEYS.get(key, (key,)) if k in work.config] or [key]:
                work.refuse(part, reason)
    if work.peft_type not in release.peft_types:
        work.refusals.append(Refusal("peft_type", f"peft {release.name} has no {work.peft_type!r} adapters"))
    else:
        for rewrite in REWRITERS:
            rewrite(work)
    return Plan(adapter.display, str(adapter.path_of(CONFIG_NAME)), release.name, str(written) if written else None,
                config, work.config, tuple(work.changes), tuple(work.refusals), tuple(notes), snapshot,
                _still_broken(adapter, work, release.name, serve, max_lora_rank, base))


def _still_broken(adapter: Adapter, work: _Work, release: str, serve: Optional[str],
                  max_lora_rank: Optional[int] = None, base: Optional[str] = None) -> tuple[Finding, ...]:
    """Check the adapter as it will be after the rewrite, for the same release and engine: the errors left
    are what no exact config rewrite repairs (rank mismatch, empty or NaN weights, another architecture).
    Keys already refused are not repeated: the refusal says why."""
    from peftdoctor.ops.check import check  # the same rules as `check`, on the same Adapter, read once

    rewritten = dataclasses.replace(adapter, config=work.config)
    if work.config != adapter.config or list(work.config) != list(adapter.config):
        # the file is written anew, as UTF-8 without a byte-order mark: what peft reads (rules/schema.py, PD119)
        rewritten = dataclasses.replace(rewritten, config_encoding="utf-8", config_peft_error=None)
    refused = {r.key for r in work.refusals}
    report = check(rewritten, peft=release, serve=serve, max_lora_rank=max_lora_rank, base=base)
    return tuple(f for f in report.findings if f.severity is Severity.ERROR and f.key not in refused)


def new_text(plan: Plan) -> str:
    """The rewritten file, in the original's layout: key order, indentation, final newline."""
    original = plan.snapshot.text if plan.snapshot else ""
    if not plan.changed:
        return original
    indent = next((len(line) - len(line.lstrip(" ")) for line in original.splitlines()[1:2]), None) or None
    text = json.dumps(plan.result, indent=indent, ensure_ascii=False, allow_nan=False)
    # A lone surrogate (a "\\ud800" escape in the original) cannot be encoded as UTF-8; written back
    # as the same \\uXXXX escape it keeps its meaning. Only surrogates are unencodable in UTF-8.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text + "\n" if original.endswith("\n") or not original else text


def diff(plan: Plan) -> str:
    """A unified diff that `patch -p1` (or `git apply`) applies in the adapter directory."""
    original = plan.snapshot.text if plan.snapshot else ""
    lines = difflib.unified_diff(original.splitlines(keepends=True), new_text(plan).splitlines(keepends=True),
                                 f"a/{CONFIG_NAME}", f"b/{CONFIG_NAME}")
    # A last line without its newline must say so, or patch rejects the hunk (difflib does not mark it).
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def apply(plan: Plan, backup_suffix: Optional[str] = ".orig") -> Written:
    """Write the plan's result (nothing when unchanged or refused), or refuse with WriteRefused; either
    way clean up what an earlier killed run left beside the config."""
    path = Path(plan.config_path)
    if plan.refused or plan.snapshot is None:
        return Written(None)
    if not plan.changed:
        return Written(None, () if path.is_symlink() else clean_leftovers(path, backup_suffix))
    if path.is_symlink():
        raise WriteRefused(f"{path} is a symlink (a hub cache entry?); fix rewrites only regular files")
    return replace_text(path, new_text(plan), plan.snapshot, backup_suffix)
