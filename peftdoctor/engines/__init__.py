"""Deployment targets: will an inference engine (vLLM, SGLang, TGI) serve this adapter, and compute
what peft computes?

What each engine release accepts is data (`<engine>.json` beside this file, one entry per feature
and release range, each citing the engine source it was read from); `features.py` says which
features an adapter uses. This module only joins the two. Light: no torch, transformers or peft.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
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
    # The peft each checked release installs and parses adapter_config.json with, as its requirements pin it
    # (TGI: server/requirements_cuda.txt, else the server/pyproject.toml range); empty where the engine
    # reads the config itself (vLLM's PEFTHelper, SGLang's LoRAConfig).
    peft_pins: tuple[tuple[Version, str], ...] = ()

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
                 tuple(_entry(raw) for raw in data["entries"]),
                 tuple((Version(v), pin) for v, pin in (data.get("peft_pins") or {}).items()))


def _entry(raw: dict[str, Any]) -> Entry:
    try:
        releases = SpecifierSet(raw["releases"])
    except InvalidSpecifier:
        raise ValueError(f"target entry {raw.get('id')}: releases {raw['releases']!r} is not a SpecifierSet") from None
    return Entry(raw["id"], raw["feature"], releases, raw["behaviour"], raw["message"], raw["fix"], raw["source"],
                 raw.get("rewrite"), tuple(sorted((raw.get("params") or {}).items())))


def judged_release(target: Target) -> tuple[Table, Version, Optional[Finding]]:
    """The table and the checked release that judges `target`, with a PD455 note when that release stands
    in for another: a version between checked releases, or newer than all of them, is judged as the closest
    older checked release (what changed since is unknown, as for an unknown peft release); one older than
    every checked release is unusable input (peftdoctor read nothing of it)."""
    table = load_table(target.engine)
    if target.version is None:
        return table, table.newest, None
    older = [v for v in table.checked if v <= target.version]
    if not older:
        raise UnusableInput(f"--target {target}: {table.name} {target.version} is older than every checked "
                            f"release ({min(table.checked)})")
    stand_in = max(older)
    if stand_in == target.version:
        return table, stand_in, None
    why = "newer than every checked release" if stand_in == table.newest else "between checked releases"
    return table, stand_in, rule("PD455").finding(
        f"{table.name} {target.version} is not a checked release ({why}); judged as {table.name} {stand_in}, "
        f"the closest older checked release",
        f"upgrade peftdoctor for tables checked against {table.name} {target.version}, or pass "
        f"--target {target.engine}=={stand_in}")


@dataclass(frozen=True)
class PeftPin:
    """The peft an engine release installs: its requirement as written, and the known peft release that
    stands for it (the requirement itself, or the oldest known release a range admits: the release the
    range was written for)."""

    engine: str  # "TGI 3.3.7"
    requirement: str  # "0.15.2", "^0.10", ">=0.14.0"
    release: str  # a known peft release, "0.15.2"

    def note(self, asked: bool, judged: str) -> Optional[Finding]:
        """The PD457 note: judged for the pinned peft, or (`asked`: --peft) for the release `judged`."""
        if not asked:
            return rule("PD457").finding(
                f"{self.engine} parses adapter_config.json with the peft it installs ({self.requirement}); "
                f"judged for peft {self.release}",
                "pass --peft VERSION where your image installs another peft")
        if judged != self.release:
            return rule("PD457").finding(
                f"{self.engine} installs peft {self.requirement}; judged for peft {judged}, as --peft asks",
                f"leave out --peft to judge for the peft {self.engine} installs")
        return None


def _requirement(text: str) -> Optional[SpecifierSet]:
    """A pin as requirement files and Poetry write it: "0.15.2", "^0.13.2" (Poetry's caret), ">=0.14.0"."""
    caret = re.fullmatch(r"\^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    try:
        if caret:
            major, minor = int(caret[1]), int(caret[2])
            upper = f"0.{minor + 1}" if major == 0 else f"{major + 1}"
            return SpecifierSet(f">={text.strip()[1:]},<{upper}")
        return SpecifierSet(text if re.match(r"\s*[<>=!~]", text) else f"=={text.strip()}")
    except InvalidSpecifier:
        return None


def peft_pin(target: Target, known: tuple[Version, ...]) -> Optional[PeftPin]:
    """The peft the release judged for `target` installs, resolved among the `known` peft releases; None
    where the table pins none, or no known release satisfies the pin."""
    table, version, _ = judged_release(target)
    requirement = dict(table.peft_pins).get(version)
    wanted = _requirement(requirement) if requirement else None
    admitted = [v for v in known if wanted is not None and wanted.contains(v)]
    return PeftPin(f"{table.name} {version}", requirement, str(min(admitted))) if admitted else None


def applicable(target: Target) -> tuple[Table, Version, list[Entry]]:
    """The table, the checked release judged (see judged_release), and the entries that hold for it."""
    table, version, _ = judged_release(target)
    return table, version, [e for e in table.entries if e.releases.contains(version, prereleases=True)]


def stand_in_notes(target: Target) -> list[Finding]:
    """The PD455 note when `target` is judged as another release, else nothing."""
    return [note for note in (judged_release(target)[2],) if note is not None]


def _label(table: Table, version: Version, target: Target) -> str:
    if target.version is None:
        return f"{table.name} {version} (newest release checked)"
    return f"{table.name} {version}" + ("" if version == target.version else f" (standing in for {target.version})")


def _key(entry: Entry) -> Optional[str]:
    """The config key a finding of `entry` is about: the feature's, or the one its params name."""
    return FEATURE_KEYS.get(entry.feature) or dict(entry.params).get("key")


def _hits(entries: list[Entry], config: dict[str, Any], header: Optional[Header],
          base: Optional[Base] = None, settings: Optional[Mapping[str, Any]] = None) -> list[tuple[Entry, str]]:
    """`settings`: the server's own flags where the user knows them ({"max_lora_rank": 64}; require_settings),
    merged into each detector's params; without them the detectors assume the engine's defaults."""
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
    """One finding (PD401-PD449) per feature the adapter uses that `target` does not serve as peft does,
    after the PD455 note when a checked release stands in for the one asked;
    `base`: the base check found (its architecture decides which modules the engine serves)."""
    table, version, entries = applicable(target)
    label = _label(table, version, target)
    findings = stand_in_notes(target)
    for entry, detail in _hits(entries, config, adapter.header, base, settings):
        if entry.behaviour == "ok":
            continue
        findings.append(rule(FEATURE_CODES[entry.feature]).finding(
            f"{label} {_OUTCOME[entry.behaviour]}: {entry.message} ({detail}) [{entry.id}]",
            entry.fix, key=_key(entry)))
    return findings


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
    return [(_key(e) or e.feature, f"{_label(table, version, target)} {_OUTCOME[e.behaviour]}: "
             f"{e.message} ({d}); {e.fix}")
            for e, d in hits if e.behaviour != "ok" and (not e.rewrite or blocked)
            and "server_flag" not in dict(e.params)]  # a server flag, not the adapter, fixes those


def require_settings(target: Target, settings: Mapping[str, Any]) -> None:
    """UsageError for a server setting the release cannot start with: vLLM's LoRAConfig refuses a
    max_lora_rank outside its allowed values (the rank entries' `allowed`), so no such server exists."""
    table, version, entries = applicable(target)
    rank = settings.get("max_lora_rank")
    allowed = sorted({a for e in entries for a in dict(e.params).get("allowed", ())})
    if rank is not None and allowed and rank not in allowed:
        raise UsageError(f"--max-lora-rank {rank}: {table.name} {version} does not start with it; its "
                         f"--max-lora-rank accepts {', '.join(map(str, allowed))}")
