"""The result objects that every command returns and every reporter renders.

They are plain frozen data: the CLI prints them, the Python API hands them to callers,
and the JSON/SARIF reporters serialise them. Nothing here does I/O.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Optional

FORMAT_VERSION = 1


class Severity(str, enum.Enum):
    """Ordered severities; `--fail-on` compares against this order."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a stable rule code, what it concerns, and how to fix it."""

    code: str
    severity: Severity
    message: str
    fix: str
    key: Optional[str] = None  # config key (a JSON pointer-ish dotted name) it concerns
    file: Optional[str] = None  # file it concerns, relative to the adapter directory

    def to_dict(self) -> dict[str, Optional[str]]:
        """The shape every JSON output uses for a finding."""
        return {"code": self.code, "severity": self.severity.value, "key": self.key, "file": self.file,
                "message": self.message, "fix": self.fix}


CompatResult = Literal["ok", "drops_keys", "fails"]
# The whole adapter in one release, best first: computes the adapter; drops config keys; computes part of it;
# computes the base; some modules random; computes something else (NaN, other magnitudes); raises.
VERDICTS = ("ok", "drops_keys", "partial", "base", "random", "wrong", "fails")


@dataclass(frozen=True)
class Compatibility:
    """What one peft release does when it loads this adapter_config.json."""

    peft: str
    result: CompatResult
    dropped: tuple[str, ...] = ()
    error: Optional[str] = None  # the error text that release raises
    warning: Optional[str] = None  # the warning it prints while dropping keys, if any
    lost: tuple[tuple[str, str], ...] = ()  # (key, what is lost) for each dropped key that bears meaning
    verdict: Optional[str] = None  # the whole adapter (one of VERDICTS); None: only the config was judged
    part: Optional[str] = None  # what decides the verdict: "config", "transformers", "weights" or "base"
    detail: Optional[str] = None  # one line: the error text, or what is applied

    @property
    def judged(self) -> str:
        return self.verdict or self.result


@dataclass(frozen=True)
class Report:
    """Everything `check` learned about one adapter."""

    path: str
    peft_installed: Optional[str]
    peft_target: Optional[str]
    findings: tuple[Finding, ...] = ()
    compatibility: tuple[Compatibility, ...] = ()
    written_by: Optional[str] = None  # e.g. "0.13.2" or ">=0.9.0"
    kind: str = "peft-adapter"  # what the path turned out to be
    skipped: tuple[str, ...] = field(default=())  # checks that could not run, and why

    def worst(self) -> Optional[Severity]:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def fails_at(self, threshold: Severity) -> bool:
        return any(f.severity.rank >= threshold.rank for f in self.findings)
