"""The catalog of peft releases: one generated JSON Schema per release, shipped as package data.

Everything peftdoctor knows about what a release accepts comes from these files; nothing here
imports peft. The installed peft is read from package metadata only.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

from packaging.version import InvalidVersion, Version

SCHEMA_PACKAGE = "peftdoctor.schemas"


@dataclass(frozen=True, eq=False)  # identity-hashed: one object per release, cached by load()
class Release:
    """What one peft release accepts in adapter_config.json, read from its schema."""

    version: Version
    schema: dict[str, Any]

    # cached_property: these are read for every release on every check (scan's hot loop).
    @functools.cached_property
    def name(self) -> str:
        return str(self.version)

    @property
    def info(self) -> dict[str, Any]:
        return self.schema["x-peft"]

    @functools.cached_property
    def peft_types(self) -> frozenset[str]:
        return frozenset(self.info["config_classes"])

    @property
    def unknown_keys(self) -> str:
        """'raise', 'warn' or 'ignore': what this release does with a key it does not know."""
        return self.info["unknown_keys"]

    def fields(self, peft_type: str) -> dict[str, Any]:
        """Property schemas of the config class for `peft_type` (empty if the type is unknown)."""
        definition = self.schema["$defs"].get(peft_type)
        return definition["properties"] if definition else {}

    def config_class(self, peft_type: str) -> str:
        return self.info["config_classes"].get(peft_type, "PeftConfig")


def parse_version(text: object) -> Optional[Version]:
    """Parse a peft version as peft writes it; dev installs append '@<commit>', which packaging rejects."""
    if not isinstance(text, str):
        return None
    try:
        return Version(text.partition("@")[0].strip())
    except InvalidVersion:
        return None


# In a checkout (the repo on sys.path, nothing installed) the generated schemas sit at the top of
# the repo; a wheel or an editable install ships them as the package peftdoctor.schemas.
CHECKOUT_SCHEMAS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "schemas")


@functools.lru_cache(maxsize=None)
def schema_dir() -> str:
    """Where the schemas are: the checkout's schemas/ folder when this code runs from a checkout,
    else the installed package. The checkout comes first so that code run from a second checkout
    (a git worktree) reads its own schemas, not those an editable install of another one maps.
    Found without importing importlib.resources (~8 ms of check's budget)."""
    if os.path.isfile(os.path.join(CHECKOUT_SCHEMAS, "__init__.py")):
        return CHECKOUT_SCHEMAS
    spec = importlib.util.find_spec(SCHEMA_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    raise RuntimeError("peftdoctor's schemas are missing: reinstall peftdoctor")


@functools.lru_cache(maxsize=None)
def known_versions() -> tuple[Version, ...]:
    """Every release with a shipped schema, oldest first."""
    names = os.listdir(schema_dir())
    found = (parse_version(n[len("peft-"):-len(".json")]) for n in names
             if n.startswith("peft-") and n.endswith(".json"))
    return tuple(sorted(v for v in found if v is not None))


@functools.lru_cache(maxsize=None)
def load(version: Version) -> Release:
    with open(os.path.join(schema_dir(), f"peft-{version}.json"), encoding="utf-8") as fh:
        return Release(version, json.load(fh))


@functools.lru_cache(maxsize=None)
def all_releases() -> tuple[Release, ...]:
    return tuple(load(v) for v in known_versions())


@functools.lru_cache(maxsize=None)
def installed_peft() -> Optional[str]:
    """The installed peft's version string, from metadata (peft itself is never imported)."""
    return _dist_info_version("peft")


def _dist_info_version(name: str) -> Optional[str]:
    # The same search importlib.metadata makes (the first NAME-VERSION.dist-info or .egg-info on
    # sys.path), without its ~12 ms import: a tenth of check's start-up budget.
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for found in names:
            base, dot, suffix = found.rpartition(".")
            stem, _, version = base.partition("-")
            if dot and suffix in ("dist-info", "egg-info") and stem.lower().replace("-", "_") == name:
                return version.split("-")[0] or None
    return None


@functools.lru_cache(maxsize=None)
def closest_known(version: Version) -> Optional[Version]:
    """The schema to judge `version` by: the same release, else the newest one not newer than it.

    A patch or dev release of peft that has no schema of its own accepts what the release
    before it accepts far more often than not; the report says which schema stood in.
    """
    older = [v for v in known_versions() if v <= Version(version.base_version) or v == version]
    return older[-1] if older else None
