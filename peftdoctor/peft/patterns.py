"""How each peft release matches rank_pattern / alpha_pattern keys to module names.

Three regimes, read from peft's source (peft/tuners/lora/model.py, peft/utils/other.py):
- 0.6.0-0.13.x: one key is picked from rank_pattern's keys then alpha_pattern's keys, the first
  with re.match(rf".*\\.{key}$", module); both r and alpha are then looked up under that one key
  (and the module's own full name is the fallback key);
- 0.14.0: the same regex, but rank and alpha keys are picked separately;
- 0.15.0 on: separately, with re.match(rf"(.*\\.)?({key})$", module).
The keys come from untrusted files, so each match goes through peft/bounded.py (same answers as re,
in bounded time: a key like `(a+)+b` would otherwise backtrack for minutes).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from packaging.version import Version

from peftdoctor.peft import bounded

Resolver = Callable[[dict, dict, str, Any, Any], tuple[Any, Any]]


def _first(keys: list[str], module: str, template: str) -> Optional[str]:
    for key in keys:
        try:
            if bounded.match(template.format(key=key), module) is not None:
                return key
        except re.error:
            continue
    return None


# How a key is wrapped into the regex peft matches module names with.
_OLD_KEY, _NEW_KEY = r".*\.{key}$", r"(.*\.)?({key})$"


def key_regex(key: str, version: Version) -> str:
    """The regex peft `version` matches module names against for a rank_pattern / alpha_pattern key."""
    return (_NEW_KEY if version >= Version("0.15.0") else _OLD_KEY).format(key=key)


def _combined(rank: dict, alpha: dict, module: str, r: Any, lora_alpha: Any) -> tuple[Any, Any]:
    key = _first([*rank, *alpha], module, _OLD_KEY) or module
    return rank.get(key, r), alpha.get(key, lora_alpha)


def _separate(template: str) -> Resolver:
    def resolve(rank: dict, alpha: dict, module: str, r: Any, lora_alpha: Any) -> tuple[Any, Any]:
        r_key = _first(list(rank), module, template) or module
        a_key = _first(list(alpha), module, template) or module
        return rank.get(r_key, r), alpha.get(a_key, lora_alpha)

    return resolve


_REGIMES: list[tuple[Version, Resolver]] = [
    (Version("0.15.0"), _separate(_NEW_KEY)),
    (Version("0.14.0"), _separate(_OLD_KEY)),
    (Version("0.0"), _combined),
]


def resolver(version: Version) -> Resolver:
    return next(resolve for since, resolve in _REGIMES if version >= since)


def declared_ranks(config: dict[str, Any], default_r: Optional[int] = 8) -> list[int]:
    """r (default_r when absent) and every rank_pattern value that is an int."""
    pattern = config.get("rank_pattern") if isinstance(config.get("rank_pattern"), dict) else {}
    ranks = (config.get("r", default_r), *pattern.values())
    return [v for v in ranks if isinstance(v, int) and not isinstance(v, bool)]


def module_values(config: dict[str, Any], modules: list[str], version: Version) -> dict[str, tuple[Any, Any]]:
    """{module: (rank, alpha)} as peft `version` would build each module from this config."""
    resolve = resolver(version)
    rank = config.get("rank_pattern") if isinstance(config.get("rank_pattern"), dict) else {}
    alpha = config.get("alpha_pattern") if isinstance(config.get("alpha_pattern"), dict) else {}
    return {m: resolve(rank, alpha, m, config.get("r", 8), config.get("lora_alpha", 8)) for m in modules}
