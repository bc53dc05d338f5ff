"""Results that gather several others: what `check` of several paths and `fix` of several paths return.

Plain frozen data like the rest of model/; render/ turns them into text, JSON or SARIF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from peftdoctor.model.findings import Report

if TYPE_CHECKING:
    from peftdoctor.ops.combine import Combination
    from peftdoctor.ops.fix import Plan


@dataclass(frozen=True)
class Checks:
    """`check` of several adapters (or of one with --combine): each report, and whether they combine."""

    reports: tuple[Report, ...]
    combination: Optional["Combination"] = None


@dataclass(frozen=True)
class Fixes:
    """`fix` of several adapters: one plan each, in the order given."""

    plans: tuple["Plan", ...]
