"""Deployment targets: will an inference engine (vLLM, SGLang, TGI) serve this adapter, and compute
what peft computes?

What each engine release accepts is data (`<engine>.json` beside this file, one entry per feature
and release range, each citing the engine source it was read from); `features.py` says which
features an adapter uses. This module only joins the two. Light: no torch, transformers or peft.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from collections.abc import Mapping
from typing import Any, Optional

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from peftdoctor.engines.features import DETECTORS, FEATURE_CODES, FEATURE_KEYS
from peftdoctor.errors import UnusableInput, UsageError
from peftdoctor.io.safetensors import Header
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding
from peftdoctor.rules.registry import rule

ENGINES = ("vllm", "sglang", "tgi")
BEHAVIOURS = ("refuses_at_load", "different_scale", "serves_base", "ignores", "ok")
# What each behaviour means for the user, first in every finding's message.
_OUTCOME = {
    "refuses_at_load": "refuses to load it",
    "different_scale": "serves it with a different scale than peft",
    "serves_base": "silently serves the base model",
    "ignores": "silently ignores part of it, so it computes something else than peft",
}
# Rewrites `fix` knows how to apply (peftdoctor.ops.fix); entries may name only these.
REWRITES = frozenset({"fold_rslora"})
_TARGET = re.compile(r"^\s*(?P<engine>[A-Za-z]+)\s*(?:==\s*(?P<version>\S+))?\s*$")


@dataclass(frozen=True)
class Entry:
    """One row of an engine table: what releases in `releases` do with `feature`."""

    id: str
    feature: str
    releases: SpecifierSet
    behaviour: str
    message: str
    fix: str
    source: str
    rewrite: Optional[str] = None
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Table:
    engine: str
    name: str  # how the engine calls itself, for messages
    checked: tuple[Version, ...]  # the releases whose source the entries were read from
    entries: tuple[Entry, ...]

    @property
    def newest(self) -> Version:
        return max(self.checked)


@dataclass(frozen=True)
class Target:
    engine: str
    version: Optional[Version]  # None: the newest release the table was checked against

    def __str__(self) -> str:
        return self.engine if self.version is None else f"{self.engine}=={self.version}"


def parse_target(text: str) -> Target:
    """`vllm`, `vllm==0.6.3`, `sglang`, `tgi==3.0.2`; UnusableInput for anything else."""
    match = _TARGET.match(text or "")
    engine = match["engine"].lower() if match else None
    if engine not in ENGINES:
        raise UnusableInput(f"--target {text!r}: expected one of {', '.join(ENGINES)}, optionally ==VERSION")
    raw = match["version"] if match else None
    try:
        version = Version(raw.lstrip("v")) if raw else None
    except InvalidVersion:
        raise UnusableInput(f"--target {text!r}: {raw!r} is not a version") from None
    return Target(engine, version)


@lru_cache(maxsize=None)
def load_table(engine: str) -> Table:
    data = json.loads(resources.files(__package__).joinpath(f"{engine}.json").read_text("utf-8"))
    return Table(engine, data["name"], tuple(Version(v) for v in data["checked_releases"]),
                 tuple(_entry(raw) for raw in data["entries"]))


def _entry(raw: dict[str, Any]) -> Entry:
    try:
        releases = SpecifierSet(raw["releases"])
    except InvalidSpecifier:
        raise ValueError(f"target entry {raw.get('id')}: releases {raw['releases']!r} is not a SpecifierSet") from None
    return Entry(raw["id"], raw["feature"], releases, raw["behaviour"], raw["message"], raw["fix"], raw["source"],
                 raw.get("rewrite"), tuple(sorted((raw.get("params") or {}).items())))


def applicable(target: Target) -> tuple[Table, Version, list[Entry]]:
    """The table, the release judged, and the entries that hold for it."""
    table = load_table(target.engine)
    version = target.version or table.newest
    return table, version, [e for e in table.entries if e.releases.contains(version, prereleases=True)]


def _hits(entries: list[Entry], config: dict[str, Any], header: Optional[Header],
          base: Optional[Base] = None, settings: Optional[Mapping[str, Any]] = None) -> list[tuple[Entry, str]]:
    """`settings`: how the server is started (SETTINGS), merged into each detector's params."""
    found = []
    for entry in entries:
        detail = DETECTORS[entry.feature](config, header, {**dict(entry.params), "base": base, **(settings or {})})
        if detail is not None:
            found.append((entry, detail))
    # An adapter the engine cannot load as LoRA at all makes every finer finding noise.
    fatal = [(e, d) for e, d in found if e.feature in ("any_adapter", "not_lora") and e.behaviour != "ok"]
    return fatal or found


def target_findings(adapter: Adapter, config: dict[str, Any], target: Target,
                    base: Optional[Base] = None, settings: Optional[Mapping[str, Any]] = None) -> list[Finding]:
    """One finding (PD401-PD449) per feature the adapter uses that `target` does not serve as peft does;
    `base`: the base check found (its architecture decides which modules the engine serves); `settings`:
    the server's own flags where the user knows them ({"max_lora_rank": 64}), else its defaults are assumed."""
    table, version, entries = applicable(target)
    label = f"{table.name} {version}" + ("" if target.version else " (newest release checked)")
    require_settings(table, version, entries, settings or {})
    findings = []
    for entry, detail in _hits(entries, config, adapter.header, base, settings):
        if entry.behaviour == "ok":
            continue
        findings.append(rule(FEATURE_CODES[entry.feature]).finding(
            f"{label} {_OUTCOME[entry.behaviour]}: {entry.message} ({detail}) [{entry.id}]",
            entry.fix, key=FEATURE_KEYS.get(entry.feature)))
    return findings


def require_settings(table: Table, version: Version, entries: list[Entry], settings: Mapping[str, Any]) -> None:
    """UsageError for a server setting the release cannot start with: vLLM's LoRAConfig refuses a
    max_lora_rank outside its allowed values (the rank entries' `allowed`), so no such server exists."""
    rank = settings.get("max_lora_rank")
    allowed = sorted({a for e in entries for a in dict(e.params).get("allowed", ())})
    if rank is not None and allowed and rank not in allowed:
        raise UsageError(f"--max-lora-rank {rank}: {table.name} {version} does not start with it; its "
                         f"--max-lora-rank accepts {', '.join(map(str, allowed))}")


def rewrites_for(target: Target, config: dict[str, Any], header: Optional[Header] = None) -> set[str]:
    """Exact config rewrites that make `target` compute what peft computes (e.g. "fold_rslora")."""
    _, _, entries = applicable(target)
    hits = _hits(entries, config, header)
    if any(e.feature == "rank_pattern" and e.behaviour != "ok" for e, _ in hits):
        return set()  # folding into alpha_pattern is no help to an engine that ignores the patterns
    return {e.rewrite for e, _ in hits if e.rewrite and e.behaviour != "ok"}


def refusals_for(target: Target, config: dict[str, Any], header: Optional[Header] = None) -> list[tuple[str, str]]:
    """(config key, reason) for each problem no rewrite solves: `fix --target` must refuse these."""
    table, version, entries = applicable(target)
    hits = _hits(entries, config, header)
    blocked = any(e.feature == "rank_pattern" and e.behaviour != "ok" for e, _ in hits)
    return [(FEATURE_KEYS.get(e.feature) or e.feature, f"{table.name} {version} {_OUTCOME[e.behaviour]}: "
             f"{e.message} ({d}); {e.fix}")
            for e, d in hits if e.behaviour != "ok" and (not e.rewrite or blocked)
            and "server_flag" not in dict(e.params)]  # a server flag, not the adapter, fixes those
