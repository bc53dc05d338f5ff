"""Checks: small functions `Context -> list[Finding]`, each emitting findings of registered rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from peftdoctor.model.adapter import Adapter
from peftdoctor.model.findings import Finding
from peftdoctor.peft.releases import Release


@dataclass(frozen=True)
class Context:
    """What every check may look at: the adapter as read, and the release it is judged for."""

    adapter: Adapter
    config: dict[str, Any]
    target: Release

    @property
    def peft_type(self) -> Optional[str]:
        value = self.config.get("peft_type")
        return value if isinstance(value, str) else None


Check = Callable[[Context], list[Finding]]
