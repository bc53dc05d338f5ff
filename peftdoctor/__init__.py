"""peftdoctor: keep PEFT adapters loadable and deployable.

The Python API is the same set of functions the CLI calls, each returning the plain data object
the CLI renders: check -> Report, fix -> Plan, fix_copy (fix --out) -> FixedCopy, scan -> ScanReport, verify -> VerifyReport,
load_only (verify --load-only) -> LoadOnlyResult.
Everything but `check` is imported on first use, so `import peftdoctor` stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional

__version__ = "0.2.0"  # the one version: pyproject.toml reads it (setuptools dynamic, no import)

from peftdoctor.errors import UnusableInput  # noqa: E402
from peftdoctor.model.findings import Compatibility, Finding, Report, Severity  # noqa: E402
from peftdoctor.ops.check import check  # noqa: E402

if TYPE_CHECKING:
    from peftdoctor.ops.fix import Change, Plan, Refusal
    from peftdoctor.ops.fix_copy import FixedCopy, fix_copy
    from peftdoctor.ops.scan import ScanReport
    from peftdoctor.verification.result import VerifyReport

# name -> (module, attribute), resolved on first access (PEP 562)
_LAZY = {
    "plan_fix": ("ops.fix", "plan"), "apply_fix": ("ops.fix", "apply"), "Plan": ("ops.fix", "Plan"),
    "Change": ("ops.fix", "Change"), "Refusal": ("ops.fix", "Refusal"), "scan": ("ops.scan", "scan"),
    "ScanReport": ("ops.scan", "ScanReport"), "load_only": ("verification.load_only", "load_only"),
    "LoadOnlyResult": ("verification.result", "LoadOnlyResult"),
    "fix_copy": ("ops.fix_copy", "fix_copy"), "FixedCopy": ("ops.fix_copy", "FixedCopy"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'peftdoctor' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


def fix(path: str, peft: Optional[str] = None, *, write: bool = True, backup_suffix: Optional[str] = ".orig",
        force: bool = False, serve: Optional[str] = None) -> "Plan":
    """Plan the rewrite of `path` for `peft` (and serving engine `serve`); with write=True apply it
    unless refused."""
    from peftdoctor.ops.fix import apply, plan

    the_plan = plan(path, peft=peft, force=force, serve=serve)
    if write:
        apply(the_plan, backup_suffix)
    return the_plan


def verify(adapter: str, base: Optional[str] = None, **options: Any) -> "VerifyReport":
    """Load base + adapter, merge, compare and save (see peftdoctor.verification.run.verify)."""
    from peftdoctor.verification.run import verify as run_verify

    return run_verify(adapter, base, **options)


__all__ = ["check", "fix", "verify", "load_only", "LoadOnlyResult", "scan", "ScanReport", "plan_fix", "apply_fix",
           "fix_copy", "FixedCopy",
           "Plan", "Change", "Refusal", "Report", "Finding", "Compatibility", "Severity", "UnusableInput", "__version__"]
