"""Can these adapters be combined on one base with peft's add_weighted_adapter?

The conditions are those LoraModel._check_add_weighted_adapter enforces (peft/tuners/lora/model.py),
plus the one it cannot see: all adapters must have been trained on the same base.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from peftdoctor.model.findings import Finding, Report
from peftdoctor.peft.patterns import declared_ranks
from peftdoctor.rules.registry import rule

# combination_type values add_weighted_adapter accepts, and how it sizes the new adapter's rank.
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
COMBINATIONS = SAME_RANK + ("cat", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")


@dataclass(frozen=True)
class Combination:
    combination_type: str
    adapters: tuple[str, ...]
    findings: tuple[Finding, ...]
    new_rank: Optional[int]

    @property
    def possible(self) -> bool:
        return not any(f.severity.value == "error" for f in self.findings)


def max_rank(config: dict[str, Any]) -> Optional[int]:
    """The rank add_weighted_adapter sizes this adapter by: max(r, *rank_pattern.values())."""
    return max(declared_ranks(config), default=None)


def combine(reports: list[Report], configs: list[dict[str, Any]], combination_type: str) -> Combination:
    names = tuple(r.path for r in reports)
    findings: list[Finding] = []
    types = {c.get("peft_type") for c in configs}
    if types != {"LORA"}:
        findings.append(rule("PD505").finding(f"peft types {sorted(map(str, types))}: add_weighted_adapter "
                                              "combines LoRA adapters only", "combine LoRA adapters only"))
    bases = {c.get("base_model_name_or_path") for c in configs}
    if len(bases) > 1:
        findings.append(rule("PD504").finding(
            f"trained on different bases: {', '.join(sorted(map(str, bases)))}",
            "combine only adapters trained on the same base model", key="base_model_name_or_path"))
    if any(c.get("target_parameters") for c in configs):
        findings.append(rule("PD506").finding("an adapter uses target_parameters, which add_weighted_adapter "
                                              "refuses", "combine adapters without target_parameters",
                                              key="target_parameters"))
    saved = [set(c.get("modules_to_save") or ()) for c in configs]
    shared = sorted({m for i, a in enumerate(saved) for b in saved[i + 1:] for m in a & b})
    if shared:
        findings.append(rule("PD502").finding(f"several adapters save their own copy of {', '.join(shared)}",
                                              "keep modules_to_save in at most one of them",
                                              key="modules_to_save"))
    if len({type(c.get("target_modules")).__name__ for c in configs}) > 1:
        findings.append(rule("PD503").finding("target_modules is a list in some adapters and a regex string in "
                                              "others", "save all with list target_modules", key="target_modules"))
    ranks = [max_rank(c) for c in configs]
    new_rank = _new_rank(combination_type, ranks, len(configs))
    if combination_type in SAME_RANK and len(configs) > 1 and len(set(ranks)) > 1:
        findings.append(rule("PD501").finding(
            f"ranks {ranks} differ: {combination_type} needs one rank for all",
            "use --combine cat (rank = sum) or svd (rank = max)", key="r"))
    return Combination(combination_type, names, tuple(findings), new_rank)


def _new_rank(combination_type: str, ranks: list[Optional[int]], count: int) -> Optional[int]:
    known = [r for r in ranks if r is not None]
    if len(known) != len(ranks) or not known:
        return None
    if combination_type == "cat" and count > 1:
        return sum(known)
    if combination_type.endswith("svd"):
        return max(known)
    return known[0] if len(set(known)) == 1 else None
