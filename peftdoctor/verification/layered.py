"""The paths that judge a merge one module at a time instead of loading the model (merged.py's walk).

Layer by layer: a base too large to load whole (and not taken by accelerate, offloaded.py) has its merge
streamed into --out shard by shard and verified module by module, or without --out each targeted module
merged on the fly and judged. --merged: a merged model made by any tool, judged tensor by tensor against
base + adapter. Memory holds one module's weights, never the model; torch and peft are imported inside
the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from peftdoctor.merge import plan as P
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.rules.registry import rule
from peftdoctor.verification import merged as merged_judge
from peftdoctor.verification.steps import Progress, Run, resolve_base, streamed_merge


def verify_layer_by_layer(run: Run, facts: Adapter, base: Base, out: Optional[Path], dtype: str,
                          reason: str, state: dict[str, Any], trust_remote_code: bool) -> None:
    """Too large to load whole: stream the merge into --out shard by shard, then verify it one module at a
    time (each targeted weight against base + delta, and its layer's output on a probe against peft's
    unmerged forward); without --out, each module is merged on the fly and judged the same way."""
    state["device"] = "cpu"
    run.step("memory", "measuring the memory available",
             lambda: (None, f"{reason}: verified layer by layer, one module in memory at a time, on the CPU"))
    merged_base: Optional[Base] = None
    if out is not None:
        run.step("merge (streaming)", "streaming the merge shard by shard",
                 lambda: streamed_merge(facts, base, out, dtype, allow_noop=False, trust_remote_code=trust_remote_code))
        state["out"] = str(out)
        merged_base = merged_judge.merged_base(out)
    else:
        run.notes.append("no --out given: each targeted module was merged on the fly (as the streaming merge "
                         "does) and judged; pass --out DIR to write and verify the merged model")
    _judge_into(run, facts, base, merged_base, "layer parity",
                "checking the merged model layer by layer against base + adapter", trust_remote_code)
    state["merge_base"] = f"{base.display} weights in {dtype}"


def verify_merged(run: Run, facts: Adapter, base_arg: Optional[str], merged: str, state: dict[str, Any],
                  trust_remote_code: bool) -> None:
    """Judge a merged model made elsewhere: every tensor against base + the adapter's delta."""
    base = run.step("resolve base", "finding the base model", lambda: resolve_base(facts, base_arg))
    state["base"], state["device"] = base.display, "cpu"
    why = None if facts.config is None else P.refusal(facts.config)
    if why is not None:
        run.skip("compare tensors", why.split(" cannot be stream-merged")[0] + " cannot be judged tensor by tensor: "
                 "only LoRA merges (rsLoRA, DoRA, rank/alpha patterns included) are")
        return
    P.require_weights(facts)
    found = run.step("read merged", f"reading the merged model {merged}", lambda: _read_merged(merged))
    state["dtype"] = found.saved_dtype or "auto"
    state["merge_base"] = f"{merged} (made elsewhere), against {base.display}"
    outcome = _judge_into(run, facts, base, found, "compare tensors",
                          "comparing the merged model with base + adapter, tensor by tensor", trust_remote_code)
    if outcome is not None and outcome.merged_dtype:
        state["dtype"] = outcome.merged_dtype


def _read_merged(directory: str) -> tuple[Base, str]:
    found = merged_judge.merged_base(Path(directory))
    layout = P.read_layout(found)  # every shard's header: a damaged or missing shard is unusable input
    count = sum(len(shard.tensors) for shard in layout.shards)
    return found, (f"{count} tensors in {len(layout.shards)} shard(s), "
                   f"tie_word_embeddings={found.tie_word_embeddings}")


def _judge_into(run: Run, facts: Adapter, base: Base, merged: Optional[Base], name: str,
                message: str, trust_remote_code: bool) -> Optional[merged_judge.Outcome]:
    outcome = run.step(name, message, lambda: _judged(facts, base, merged, run.say, trust_remote_code))
    run.findings.extend(outcome.findings)
    run.notes.extend(outcome.notes)
    parity = outcome.parity()
    if parity is not None:
        run.parity.append(parity)
        if not parity.passed:
            failing = [p.module for p in outcome.layers if not p.passed]
            run.findings.append(rule("PD304").finding(
                f"layer by layer, {len(failing)} merged module(s) compute something else than base + adapter on "
                f"the probe (worst relative difference {parity.max_rel:.3g}, rounding allows {parity.tolerance:.3g}): "
                f"{', '.join(failing[:3])}" + (" ..." if len(failing) > 3 else ""),
                "see the tensor findings; merge again with `peftdoctor merge`"))
    return outcome


def _judged(facts: Adapter, base: Base, merged: Optional[Base], say: Progress,
            trust_remote_code: bool) -> tuple[Any, str]:
    outcome = merged_judge.judge(facts, base, merged, say, trust_remote_code=trust_remote_code)
    parity = outcome.parity()
    probe = (f"; probe: worst relative output difference {parity.max_rel:.3g} (rounding allows "
             f"{parity.tolerance:.3g})") if parity is not None else ""
    return outcome, outcome.summary() + probe
