"""peftdoctor: keep PEFT adapters loadable and deployable.

The Python API is the same set of functions the CLI calls; each returns a plain Report.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .adapter import UnusableInput  # noqa: E402
from .check import check  # noqa: E402
from .rewrite import Change, Plan, Refusal  # noqa: E402
from .rewrite import apply as apply_fix  # noqa: E402
from .rewrite import plan as plan_fix  # noqa: E402
from .report import Compatibility, Finding, Report, Severity  # noqa: E402

__all__ = ["check", "plan_fix", "apply_fix", "Plan", "Change", "Refusal", "Report", "Finding", "Compatibility", "Severity", "UnusableInput", "__version__"]
