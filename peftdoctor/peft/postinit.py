"""What each release refuses once its config class has the values: the post-init rules.

`scripts/peft_introspect.py` measures them by loading probe configs in each release (and building
the PeftModel on a tiny model, for values only the layers refuse) and stores them in the schema's
`x-peft.post_init_rules`: rules (each for the peft_types that showed it) whose clauses all hold
for a refused config. This module evaluates the stored clauses on a user's config; it never
decides what a release refuses.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Optional

from peftdoctor.peft.releases import Release

_MISSING = object()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    # The probes tried exact JSON values: true is not 1, 8.0 is not 8.
    return type(a) is type(b) and a == b


def _one_of(value: Any, clause: dict[str, Any]) -> bool:
    return any(e.get("absent") if value is _MISSING else "value" in e and _same(value, e["value"])
               for e in clause["examples"])


# match name -> predicate(value or _MISSING, clause). Every name the generator writes must be here
# (tests/test_post_init.py checks each stored example meets its clause and each counter does not).
MATCHES: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "one_of": _one_of,
    "float": lambda v, c: type(v) is float,
    "string": lambda v, c: isinstance(v, str),
    "nonempty": lambda v, c: isinstance(v, (str, list, dict)) and len(v) > 0,
    "not_null": lambda v, c: v is not _MISSING and v is not None,
    # peft compares with `in`, where 1 == True: so do we.
    "not_in": lambda v, c: v is not _MISSING and v is not None and v not in c["arg"],
    "at_most": lambda v, c: _number(v) and v <= c["arg"],
    "below": lambda v, c: _number(v) and v < c["arg"],
}


def meets(clause: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether `config` meets one stored clause (an unknown match name never does)."""
    predicate = MATCHES.get(clause["match"])
    return predicate is not None and predicate(config.get(clause["key"], _MISSING), clause)


@functools.lru_cache(maxsize=None)
def _by_type(release: Release) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """peft_type -> [(the rule's clauses as a stable key, rule)], config-stage rules first, each stage in
    probe order. Most releases repeat the same clauses: the key lets one check evaluate them once."""
    table: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for stage in ("config", "model"):
        for rule in release.info.get("post_init_rules", ()):
            if rule["stage"] == stage:
                for peft_type in rule["peft_types"]:
                    table.setdefault(peft_type, []).append((json.dumps(rule["when"], sort_keys=True), rule))
    return table


def rules(release: Release, peft_type: str) -> list[dict[str, Any]]:
    """The rules `release` showed for `peft_type`, config-stage first, in probe order."""
    return [rule for _key, rule in _by_type(release).get(peft_type, [])]


def refusal(release: Release, peft_type: str, config: dict[str, Any],
            seen: Optional[dict[str, bool]] = None) -> Optional[str]:
    """The error `release` raises for this config after construction, or None."""
    rule = refusing_rule(release, peft_type, config, seen)
    return fill(rule, config) if rule is not None else None


def refusing_rule(release: Release, peft_type: str, config: dict[str, Any],
                  seen: Optional[dict[str, bool]] = None) -> Optional[dict[str, Any]]:
    """The stored rule by which `release` refuses this config after construction, or None.

    Config-stage rules come first (the config is built before the model); within a stage the
    first matching rule in probe order, which follows the order of peft's own checks. `seen`
    remembers, for one config, whether each set of clauses holds (shared across releases)."""
    seen = {} if seen is None else seen
    for key, rule in _by_type(release).get(peft_type, []):
        holds = seen.get(key)
        if holds is None:
            holds = seen[key] = all(meets(c, config) for c in rule["when"])
        if holds:
            return rule
    return None


def fill(rule: dict[str, Any], config: dict[str, Any]) -> str:
    """The rule's error text with the config's own values where the release quotes them."""
    error = rule["error"]
    for key in rule.get("placeholders", ()):
        error = error.replace("{" + key + "}", str(config.get(key)))
    return error
