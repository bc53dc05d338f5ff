"""The transformers release as an axis beside the peft release: which transformers release an adapter is judged
for, whether a peft release imports under it, and how the saved module paths are renamed on load.

This module is the one home of that knowledge; the check rules ask it and never branch on transformers
versions themselves. Its tables are generated from the real releases (issue 19, item 2); until they are, it
answers from the one architecture table (peftdoctor/peft/architectures.json) with no renames and no import
failures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from peftdoctor.peft import architectures
from peftdoctor.peft.releases import _dist_info_version


@dataclass(frozen=True)
class Rename:
    """One rename a (peft, transformers) pair applies to a saved module path (without the PeftModel prefix)
    when the adapter is loaded: `re.sub(pattern, replacement, path)`, in table order."""

    pattern: str
    replacement: str
    source: str  # where the rename comes from, e.g. "transformers 5.0.0 conversion_mapping.py (mixtral)"


def known_versions() -> tuple[str, ...]:
    """The transformers releases with generated tables, oldest first."""
    return (architectures.transformers_version(),)


def installed_version() -> Optional[str]:
    """The installed transformers' version, from metadata (transformers itself is never imported)."""
    return _dist_info_version("transformers")


def choose(wanted: Optional[str]) -> tuple[str, Optional[str]]:
    """The transformers release to judge by (--transformers, else the installed one, else the newest known)
    and, where another release stands in for it, one line saying which."""
    newest = known_versions()[-1]
    wanted = wanted or installed_version()
    if wanted is None:
        return newest, f"transformers is not installed; judged against the newest known release {newest}"
    if wanted not in known_versions():
        return newest, f"no tables for transformers {wanted}; judged against transformers {newest}"
    return wanted, None


def import_failure(peft: str, transformers: str) -> Optional[str]:
    """The error `import peft` raises with this pair installed, as that release words it; None where it imports."""
    return None


def renames(peft: str, transformers: str, model_type: Optional[str]) -> tuple[Rename, ...]:
    """The renames applied to a saved adapter's module paths when peft `peft` loads it into a `model_type`
    base built by transformers `transformers` (transformers' own checkpoint conversions and peft's)."""
    return ()
