"""Print how often `explain` names the right cause on the real corpora (tests/explain_corpus/cases.jsonl,
and wild.jsonl in its build and held-out parts), and how long it takes on long and adversarial inputs.

    python bench/explain_corpus.py [-v]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from peftdoctor.messages.causes import diagnose  # noqa: E402
from peftdoctor.ops.explain import explain  # noqa: E402

CASES = ROOT / "tests" / "explain_corpus" / "cases.jsonl"
WILD = ROOT / "tests" / "explain_corpus" / "wild.jsonl"


def figure(name: str, cases: list[dict], verbose: bool) -> tuple[int, int, int, int]:
    """(adapter right, adapter total, non-adapter unrecognised, non-adapter total), printed; the cases
    missed are named except for the held-out part (only measured, never looked at case by case)."""
    adapter_right = adapter_total = quiet_right = quiet_total = 0
    for case in cases:
        codes = [e.finding.code for e in explain(case["text"])]
        if case["adapter_problem"]:
            ok = case["expected"] in codes
            adapter_total += 1
            adapter_right += ok
        else:
            ok = codes == []
            quiet_total += 1
            quiet_right += ok
        if (verbose or not ok) and "held-out" not in name:
            print(f"{'ok ' if ok else 'MISS'} {case['id']}: expected {case['expected']}, got {codes}")
    print(f"{name}: adapter cases: right cause for {adapter_right}/{adapter_total} "
          f"({100 * adapter_right / max(1, adapter_total):.1f} %); "
          f"non-adapter cases: not recognised for {quiet_right}/{quiet_total}")
    return adapter_right, adapter_total, quiet_right, quiet_total


def main(verbose: bool) -> int:
    from tests.test_explain_wild import part

    cases = [json.loads(line) for line in CASES.read_text("utf-8").splitlines()]
    wild = [json.loads(line) for line in WILD.read_text("utf-8").splitlines()]
    adapter_right, adapter_total, quiet_right, quiet_total = figure("corpus", cases, verbose)
    for name in ("build", "held-out"):
        figure(f"wild {name}", [c for c in wild if part(c["source"]) == name], verbose)
    # Long and hostile texts: the whole of explain, and the catalogue and causes (peftdoctor/messages)
    # alone; bench/explain_speed.py times the older pattern table on many more.
    last = "ValueError: LoRA rank 64 is greater than max_lora_rank 16."
    for label, text in (("10 MB log", ("INFO step 1 loss 0.5\n" * 500_000) + last),
                        ("1 MB single line", "a" * 1_000_000),
                        ("1 MB of size-mismatch openings", "size mismatch for " * 55_000),
                        ("1 MB of unexpected keyword openings", "__init__() got an unexpected keyword " * 27_000),
                        ("1 MB of mismatch lines", "size mismatch for a: copying a param with shape [0\n" * 20_000)):
        start = time.perf_counter()
        diagnose(text)
        mine = time.perf_counter() - start
        start = time.perf_counter()
        explain(text)
        print(f"{label}: explain {time.perf_counter() - start:.2f} s, of which catalogue and causes {mine:.2f} s")
    return 0 if adapter_right >= 0.9 * adapter_total and quiet_right == quiet_total else 1


if __name__ == "__main__":
    sys.exit(main("-v" in sys.argv[1:]))
