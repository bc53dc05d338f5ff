"""peftdoctor: keep PEFT adapters loadable and deployable.

The Python API is the same set of functions the CLI calls; each returns a plain Report.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

__version__ = "0.1.0"

from .adapter import UnusableInput  # noqa: E402
from .check import check  # noqa: E402
from .rewrite import Change, Plan, Refusal  # noqa: E402
from .rewrite import apply as apply_fix  # noqa: E402
from .rewrite import plan as plan_fix  # noqa: E402
from .scanning import ScanReport, scan  # noqa: E402


def verify(adapter: str, base: Optional[str] = None, **options: Any) -> "VerifyReport":
    """Load base + adapter, merge, compare and save (see peftdoctor.verification.run.verify).

    Imported on call: `import peftdoctor` must stay light for `check`.
    """
    from .verification.run import verify as run_verify

    return run_verify(adapter, base, **options)


def fix(path: str, peft: Optional[str] = None, *, write: bool = True, backup_suffix: Optional[str] = ".orig",
        force: bool = False) -> Plan:
    """Plan the rewrite of `path` for `peft` and, with write=True, apply it unless refused."""
    the_plan = plan_fix(path, peft=peft, force=force)
    if write:
        apply_fix(the_plan, backup_suffix)
    return the_plan
from .report import Compatibility, Finding, Report, Severity  # noqa: E402

if TYPE_CHECKING:
    from .verification.result import VerifyReport

__all__ = ["check", "fix", "verify", "scan", "ScanReport", "plan_fix", "apply_fix", "Plan", "Change", "Refusal", "Report", "Finding", "Compatibility", "Severity", "UnusableInput", "__version__"]
