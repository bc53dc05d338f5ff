"""A long seeded fuzz run of check, fix (plan), scan and explain, in process, through the Python API.

    python scripts/fuzz.py --count 100000 --seed 1

The generators are the hypothesis strategies of tests/test_fuzz.py (configs with deep nesting,
huge numbers, lone surrogates and wrong types for known keys; safetensors headers with lists in
shapes, huge dims and bogus offsets; fifos, links and directories in place of files), driven here
with one seed and no shrinking, so that every input runs once and each failure is counted instead
of stopping the run. Per input:
  check   every output format is rendered; UnusableInput is the one allowed exception;
  fix     the plan (for a random peft release and serving target) must keep meaning, be standard
          JSON, and be idempotent: planning again on its output changes and refuses nothing;
  scan    of the tree holding the adapter (every 4th input);
  explain of the config's bytes as text.
Prints inputs run, escaped exceptions, meaning changes, non-idempotent plans and timings; the first
few failures of each kind are printed in full. Exit 0 when all three counts are 0.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from peftdoctor.errors import UnusableInput
from peftdoctor.ops.check import check
from peftdoctor.ops.explain import explain
from peftdoctor.ops.fix import new_text, plan
from peftdoctor.ops.scan import scan
from peftdoctor.render import render
from tests.test_fuzz import (
    CONFIG,
    CONFIG_BYTES,
    FAST_TMP,
    ODDITIES,
    REAL_WEIGHTS,
    WEIGHT_BYTES,
    _dump,
    make_oddity,
    meaning_changes,
    mutated_configs,
    write_adapter,
)

PEFTS = ["0.3.0", "0.6.2", "0.9.0", "0.12.0", "0.13.2", "0.14.0", "0.21.2"]
SERVES = [None, None, None, "vllm==0.6.3", "vllm", "sglang", "tgi"]
SHOW = 3  # failures of each kind printed in full
BATCH = 10_000  # inputs per hypothesis run


class Tally:
    def __init__(self) -> None:
        self.inputs = 0
        self.failures: dict[str, list[str]] = {"escaped": [], "meaning": [], "idempotence": []}
        self.seconds: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()

    def timed(self, stage: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def fail(self, kind: str, what: str) -> None:
        found = self.failures[kind]
        if len(found) < SHOW:
            print(f"--- {kind} #{len(found) + 1}\n{what}", file=sys.stderr)
        found.append(what[:200])


def run_one(tally: Tally, work: Path, config: bytes, weights: Optional[bytes], oddity: str, peft: str,
            serve: Optional[str]) -> None:
    shutil.rmtree(work, ignore_errors=True)
    directory = work / "adapter"
    directory.mkdir(parents=True)
    write_adapter(directory, config, weights)
    make_oddity(directory, oddity)
    tally.inputs += 1
    try:
        _pipeline(tally, work, directory, config, peft, serve)
    except Exception:  # noqa: BLE001 - counted, and the run goes on
        tally.fail("escaped", f"oddity={oddity} peft={peft} serve={serve} config={config[:300]!r}\n"
                              + traceback.format_exc(limit=-4))


def _pipeline(tally: Tally, work: Path, directory: Path, config: bytes, peft: str, serve: Optional[str]) -> None:
    try:
        report = tally.timed("check", check, str(directory), peft=peft, serve=serve)
        tally.timed("render", lambda: [render(report, fmt) for fmt in ("text", "json", "sarif")])
        tally.outcomes[f"check {report.worst().value if report.worst() else 'clean'}"] += 1
    except UnusableInput:
        tally.outcomes["check unusable"] += 1
    try:
        the_plan = tally.timed("fix", plan, str(directory), peft=peft, serve=serve)
    except UnusableInput:
        tally.outcomes["fix unusable"] += 1
    else:
        tally.outcomes["fix refused" if the_plan.refused else "fix changes" if the_plan.changed else "fix none"] += 1
        problems = meaning_changes(the_plan)
        if problems:
            tally.fail("meaning", f"peft={peft} serve={serve} {problems}\nconfig={the_plan.original!r}"[:2000])
        elif the_plan.changed and not the_plan.refused and the_plan.snapshot is not None:
            (directory / CONFIG).write_text(new_text(the_plan), encoding="utf-8", errors="surrogatepass")
            again = tally.timed("fix", plan, str(directory), peft=peft, serve=serve)
            if again.changed or again.refused:
                tally.fail("idempotence", f"peft={peft} serve={serve} first={the_plan.result!r}\n"
                                          f"second changes={again.changes} refusals={again.refusals}"[:2000])
    if tally.inputs % 4 == 0:
        result = tally.timed("scan", scan, str(work), peft=peft, spool=str(work.parent / "spool.jsonl"))
        tally.timed("render", lambda: [render(result, fmt) for fmt in ("text", "json", "sarif")])
    tally.timed("explain", explain, config.decode("utf-8", errors="replace"))


def _batch(tally: Tally, work: Path, count: int, batch_seed: int) -> None:
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(batch_seed)
    # Mostly plausible configs beside the real weights, so that fix has something to rewrite.
    @given(config=st.one_of(CONFIG_BYTES, *[mutated_configs().map(_dump)] * 3),
           weights=st.one_of(WEIGHT_BYTES, *[st.just(REAL_WEIGHTS)] * 2),
           oddity=st.sampled_from(("none",) * 12 + ODDITIES[1:]), peft=st.sampled_from(PEFTS),
           serve=st.sampled_from(SERVES))
    def fuzz(config: bytes, weights: Optional[bytes], oddity: str, peft: str, serve: Optional[str]) -> None:
        run_one(tally, work, config, weights, oddity, peft, serve)

    fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tally = Tally()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        work = Path(tmp) / "input"
        # Batches of BATCH inputs, each a fresh hypothesis run seeded from --seed: one long run keeps
        # every choice it made in memory (800 MB at 40,000 inputs).
        for batch in range(0, args.count, BATCH):
            _batch(tally, work, min(BATCH, args.count - batch), args.seed * 1_000_003 + batch // BATCH)
            print(f"  {tally.inputs:,} inputs, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    total = time.perf_counter() - started
    counts = {kind: len(found) for kind, found in tally.failures.items()}
    print(f"inputs run: {tally.inputs:,} (seed {args.seed})")
    print(f"escaped exceptions: {counts['escaped']}")
    print(f"meaning changes: {counts['meaning']}")
    print(f"non-idempotent fixes: {counts['idempotence']}")
    print(f"outcomes: {', '.join(f'{k} {v:,}' for k, v in sorted(tally.outcomes.items()))}")
    print(f"seconds: total {total:.1f} ({tally.inputs / total:.0f} inputs/s); "
          + ", ".join(f"{stage} {s:.1f}" for stage, s in sorted(tally.seconds.items())))
    return 0 if not any(counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
