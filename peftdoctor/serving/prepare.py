"""prepare: what a serving engine should load for an adapter, decided before it tries.

The engine's plugin (vLLM's LoRA resolver, SGLang's loading hook) calls `prepare(source, "vllm==0.11.0")`
and gets one of three answers, each with one log line:
- the adapter itself, when nothing needs rewriting for that engine release;
- an exact fixed copy (fix --out with hard links, ops/fix_copy.py) kept in a cache (serving/cache.py),
  when a config rewrite makes the engine compute what peft computes (rsLoRA folded into lora_alpha);
- a refusal naming the finding (PD403 DoRA, PD408 rank above the server's --max-lora-rank, ...), when no
  exact rewrite exists: the engine would refuse the adapter or serve something else than peft computes.
Nothing here imports torch, transformers, peft or an engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from peftdoctor.engines import load_table, parse_target
from peftdoctor.errors import PeftdoctorError, UnusableInput, WriteFailed, one_line
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.base import find_base_config
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.findings import Finding, Report, Severity
from peftdoctor.ops.check import check
from peftdoctor.ops.fix import Plan, plan
from peftdoctor.ops.fix_copy import adapter_files, fix_copy
from peftdoctor.render import serving as say
from peftdoctor.serving.cache import CACHE_ENV, cache_root, entry_key
from peftdoctor.serving.find import find_adapter

__all__ = ["Prepared", "find_adapter", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """What the engine should do with the adapter it was asked for."""

    name: str  # what the engine asked for (adapter name)
    source: str  # directory or repo id it came from
    path: Optional[Path]  # what to load: the source, the cached fixed copy, or None when refused
    rewritten: bool
    findings: tuple[Finding, ...]  # errors and warnings for this engine release
    line: str  # one log line, terminal-safe
    reused: bool = False  # the fixed copy was already in the cache: nothing was copied

    @property
    def refused(self) -> bool:
        return self.path is None


def engine_release(target: str) -> str:
    """"vllm==0.6.5" for `target`; a bare "vllm" is the newest release its table was checked against."""
    parsed = parse_target(target)
    return f"{parsed.engine}=={parsed.version or load_table(parsed.engine).newest}"


def _said(report: Optional[Report]) -> tuple[Finding, ...]:
    shown = (Severity.ERROR, Severity.WARNING)
    return tuple(f for f in (report.findings if report else ()) if f.severity in shown)


def _blocking(findings: tuple[Finding, ...]) -> Optional[Finding]:
    """The error to name: the engine's own (PD4xx) first, since that is what the engine would trip on."""
    errors = [f for f in findings if f.severity is Severity.ERROR]
    return min(errors, key=lambda f: not f.code.startswith("PD4"), default=None)


def served_base(base: Optional[str]) -> Optional[str]:
    """`base` (the model the engine serves: a directory or a repo id) when its config.json is at hand without a
    download, so the adapter is checked against it; else None, and check judges by base_model_name_or_path."""
    return base if base and find_base_config(base) is not None else None


def prepare(source: Union[str, Path], target: str, *, name: Optional[str] = None, cache_dir: Optional[Path] = None,
            max_lora_rank: Optional[int] = None, peft: Optional[str] = None, base: Optional[str] = None) -> Prepared:
    """Check the adapter at `source` (a directory or a cached Hub repo id) for the engine release `target`
    ("vllm==0.11.0") started with `max_lora_rank`, serving the model `base` (its target modules, layer sizes
    and vocabulary against the adapter's: an adapter trained on another base loads there only to compute
    something else, or fails at load), and say what to load (see the module's docstring).
    Never raises for a bad adapter or setting: the refusal is the answer, with its one line."""
    shown = name if name is not None else str(source)
    try:
        engine = engine_release(target)
        adapter = open_adapter(str(source))
        on = served_base(base)
        the_plan = plan(adapter, peft=peft, serve=engine, max_lora_rank=max_lora_rank, base=on)
        report = check(adapter, peft=peft, serve=engine, max_lora_rank=max_lora_rank, base=on)
    except (PeftdoctorError, OSError) as exc:
        return Prepared(shown, str(source), None, False, (), say.refused(shown, None, one_line(exc)))
    if the_plan.refused or the_plan.remaining:
        return _refusal(shown, str(source), the_plan, report)
    if not the_plan.changed:
        said = _said(report)
        warnings = sum(f.severity is Severity.WARNING for f in said)
        return Prepared(shown, str(source), adapter.directory, False, said,
                        say.serving_as_is(shown, adapter.directory, engine, warnings))
    try:
        entry, after, reused = _cached_copy(adapter, the_plan, engine, cache_dir, peft, max_lora_rank)
    except (PeftdoctorError, OSError) as exc:
        return Prepared(shown, str(source), None, False, _said(report), say.refused(shown, None, one_line(exc)))
    if entry is None:
        return Prepared(shown, str(source), None, False, _said(after),
                        say.refused(shown, _blocking(_said(after))))
    return Prepared(shown, str(source), entry, True, _said(after),
                    say.serving_copy(shown, entry, the_plan.changes, engine), reused)


def _refusal(shown: str, source: str, the_plan: Plan, report: Report) -> Prepared:
    said = _said(report)
    finding = _blocking(the_plan.remaining) or _blocking(said)
    reason = "; ".join(f"{r.key}: {r.reason}" for r in the_plan.refusals) or None
    return Prepared(shown, source, None, False, said, say.refused(shown, finding, reason))


def _cached_copy(adapter: Adapter, the_plan: Plan, engine: str, cache_dir: Optional[Path], peft: Optional[str],
                 max_lora_rank: Optional[int]) -> tuple[Optional[Path], Optional[Report], bool]:
    """(the cache entry holding the fixed copy or None, its check, whether it was there already). Two
    processes making one entry at once: the second rename fails, and the first one's entry is used."""
    names, _left_out = adapter_files(adapter)
    root = cache_root(cache_dir)
    entry = root / entry_key(adapter, names, engine, the_plan.target)
    if not entry.is_dir():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnusableInput(f"cannot make the serving cache {root} ({exc.strerror}); set "
                                f"{CACHE_ENV} to a writable directory") from None
        try:
            made = fix_copy(adapter, entry, peft, serve=engine, link=True, max_lora_rank=max_lora_rank)
            return made.out, made.after, False
        except (UnusableInput, WriteFailed):
            if not entry.is_dir():
                raise  # not a lost race: the entry could not be made
    return entry, check(str(entry), peft=peft, serve=engine, max_lora_rank=max_lora_rank), True
