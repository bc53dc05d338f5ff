"""The result of `verify`: plain frozen data, rendered by render/verify.py. Nothing here imports torch.

A verification is a list of steps (each ok, failed or skipped, with its time), the parity figures
that compare one forward pass against another, and findings with PD3xx codes. "Could not verify"
(no GPU, base not cached, bitsandbytes unusable) is a skipped step, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from peftdoctor.model.findings import Finding, Severity

StepStatus = Literal["ok", "failed", "skipped"]
# verified: every parity figure within tolerance and no error finding; failed: a parity figure or
# an error finding says the deployment would compute something else; not-verified: a step that the
# verdict needs was skipped (so nothing was proven either way).
# `verify --load-only` answers what the loaded adapter computes instead (LoadOnlyResult.verdict).
Verdict = Literal["verified", "failed", "not-verified", "applies", "partial", "base-only", "random", "fails"]
# applies: every saved tensor went into a module and every adapted module got its weights; partial: some
# did; base-only / random: none did, and the adapted modules compute the base (zero-initialised LoRA B) /
# their random initialisation (init_lora_weights false); fails: PeftModel.from_pretrained raised.
LoadVerdict = Literal["applies", "partial", "base-only", "random", "fails"]
# What a module left without (some of) its weights computes: the base (its initialisation is a no-op), its
# random initialisation (init false), another initialisation, or partly loaded (some weights, the rest initial).
Computes = Literal["base", "random", "initial", "partly loaded"]


@dataclass(frozen=True)
class Step:
    name: str
    status: StepStatus
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class Parity:
    """One forward pass against a reference on the same seeded probe batch."""

    name: str  # e.g. "merged vs adapted"
    max_abs: float
    max_rel: float  # max_abs divided by the largest reference magnitude: scale-free
    top1_agreement: float  # fraction of positions whose arg-max agrees
    tolerance: float  # bound on max_rel
    passed: bool


@dataclass(frozen=True)
class Unadapted:
    """An adapted module (or a modules_to_save copy) that got no weights, or only some, from the file."""

    module: str  # its path in the base, without peft's "base_model.model." prefix
    computes: Computes
    missing: tuple[str, ...]  # the parameters left without weights, e.g. ("lora_A", "lora_B")


@dataclass(frozen=True)
class LoadOnlyResult:
    """What the installed peft's PeftModel.from_pretrained did with every saved tensor, on a base built on
    the meta device. Tensor names are the file's, module paths have no "base_model.model." prefix; all sorted,
    so that a prediction (check's) compares with it directly."""

    verdict: LoadVerdict
    peft: Optional[str]  # the peft release that loaded it
    transformers: Optional[str]
    base_class: str  # the transformers class built from the base's config.json
    applied: tuple[str, ...] = ()  # saved tensors peft loaded into a module
    unexpected: tuple[str, ...] = ()  # saved tensors that go nowhere (peft's unexpected keys)
    copies: tuple[str, ...] = ()  # saved tensors that go nowhere but equal an applied one: nothing lost
    missing: tuple[str, ...] = ()  # peft's missing adapter keys, as peft names them
    unadapted: tuple[Unadapted, ...] = ()
    adapted_modules: tuple[str, ...] = ()  # modules that got all their weights
    error: Optional[str] = None  # peft's exception in one line, when the verdict is "fails"
    warnings: tuple[str, ...] = ()  # what peft warned while loading (one line each)

    @property
    def unadapted_modules(self) -> tuple[str, ...]:
        return tuple(u.module for u in self.unadapted)

    @property
    def share(self) -> float:
        """The share of the saved tensors that peft applied (1.0 for an adapter that loads whole)."""
        total = len(self.applied) + len(self.unexpected)
        return len(self.applied) / total if total else 0.0


@dataclass(frozen=True)
class VerifyReport:
    adapter: str
    base: Optional[str]
    peft_type: Optional[str]
    task_type: Optional[str]
    device: str
    dtype: str
    peft_installed: Optional[str]
    mergeable: bool
    verdict: Verdict
    steps: tuple[Step, ...] = ()
    parity: tuple[Parity, ...] = ()
    findings: tuple[Finding, ...] = ()
    merge_base: Optional[str] = None  # which weights the merge went into (matters for QLoRA)
    out: Optional[str] = None  # where the deployable merged model now is, if it was kept
    notes: tuple[str, ...] = field(default=())
    load: Optional[LoadOnlyResult] = None  # verify --load-only: what peft applied

    def step(self, name: str) -> Optional[Step]:
        return next((s for s in self.steps if s.name == name), None)

    def worst(self) -> Optional[Severity]:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)
