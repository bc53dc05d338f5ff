"""Checks: small functions `Context -> list[Finding]`, each emitting findings of registered rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding
from peftdoctor.peft.releases import Release


@dataclass(frozen=True)
class Context:
    """What every check may look at: the adapter as read, the release it is judged for, and the base's
    config.json when it was found (else why not, for the report's `skipped` list)."""

    adapter: Adapter
    config: dict[str, Any]
    target: Release
    base: Optional[Base] = None
    base_note: Optional[str] = None
    transformers: Optional[str] = None  # the transformers release judged for (peft/transformers_axis.choose)

    @property
    def peft_type(self) -> Optional[str]:
        value = self.config.get("peft_type")
        return value if isinstance(value, str) else None


Check = Callable[[Context], list[Finding]]
