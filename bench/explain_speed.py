"""Is `peftdoctor explain` linear in the length of what it reads? Hostile lines and a large log.

    python bench/explain_speed.py [--size 1000000] [--log-size 10000000]

For every pattern of peftdoctor.ops.explain, a sample of the text it recognises (from the corpus
of real error texts in tests/explain_corpus, else a literal sample below) is cut at a quarter, a
half, three quarters and near its end, and that prefix is repeated into one line of SIZE
characters: the shape of input that makes a search rescan the same stretch from every opening.
Then a LOG_SIZE log of real error texts among ordinary training lines. Before the patterns were
made linear, a 1 MB line took over 60 s (16 KB: 2 s). Target: every text under 2 s.
Exit 0 when met, 1 when missed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "tests" / "explain_corpus" / "cases.jsonl"
TARGET_SECONDS = 2.0

# Texts that the corpus has no sample of, as the libraries print them.
SAMPLES = {
    "PD106": "Unexpected keyword arguments ['foo', 'bar'] for class LoraConfig, these are ignored",
    "PD103": "KeyError: 'NOT_A_TYPE'",
    "PD116": "Invalid task type: 'CAUSAL'",
    "PD114": "OFT has been updated since PEFT 0.14.0",
    "PD354": "Merge lora module to 4-bit linear may get different generations due to rounding errors",
    "PD356": "NaNs detected in the merged weights. The adapter default seems to be broken",
    "PD357": "requires you to execute the configuration file in that repo",
    "PD358": "couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
             "cached files",
    "PD501": "All adapters must have the same r value when using combination_type",
    "PD502": "Cannot add weighted adapters if they target the same module with modules_to_save",
    "PD503": "all adapter configs should follow the same target modules type",
}


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]


def hostile_lines(size: int) -> list[tuple[str, str]]:
    """(label, one line of `size` characters) for every pattern and cut, plus plain long runs."""
    from peftdoctor.ops.explain import PATTERNS

    samples = dict(SAMPLES)
    for text in corpus_texts():
        for pattern in PATTERNS:
            match = pattern.regex.search(text)
            if match:
                samples.setdefault(pattern.code, match.group(0))
    lines = [("hex run", "0x" + "a" * size), ("spaces", " " * size), ("one word", "a" * size),
             ("lora_A run", "size mismatch for " + "lora_A" * (size // 6))]
    for code, sample in sorted(samples.items()):
        for frac in (0.25, 0.5, 0.75, 0.95):
            cut = sample[: max(1, int(len(sample) * frac))].replace("\n", " ")
            lines.append((f"{code} x{frac}", (cut * (size // len(cut) + 1))[:size]))
    return lines


def ordinary_log(size: int) -> str:
    chunk = "\n".join(corpus_texts()) + "\n" + "INFO step 1234 loss=0.123 lr=1e-4 grad_norm=0.5 tok/s=12345\n" * 2000
    return (chunk * (size // len(chunk) + 1))[:size]


def timed(text: str) -> float:
    from peftdoctor.ops.explain import explain

    start = time.perf_counter()
    explain(text)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--log-size", type=int, default=10_000_000)
    args = parser.parse_args()
    times = [(label, timed(line)) for label, line in hostile_lines(args.size)]
    label, worst = max(times, key=lambda t: t[1])
    log_time = timed(ordinary_log(args.log_size))
    print(f"{len(times)} hostile lines of {args.size:,} chars: slowest {worst:.3f} s ({label}), "
          f"total {sum(t for _, t in times):.2f} s")
    print(f"ordinary log of {args.log_size:,} chars: {log_time:.3f} s (before: 1 MB line > 60 s, 10 MB log 0.3 s)")
    ok = worst < TARGET_SECONDS and log_time < TARGET_SECONDS
    print("target met" if ok else f"target missed: each text under {TARGET_SECONDS} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
