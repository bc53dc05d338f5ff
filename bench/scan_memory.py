"""Peak memory of `peftdoctor scan` over a tree of many adapters, json and text.

    python bench/scan_memory.py [--adapters 10000]

Builds the tree of bench/scan_speed.py, then runs `python -m peftdoctor scan TREE --format F`
in a fresh process per format (stdout to /dev/null) and prints that process's peak RSS next to
the figure of the outside test pass before scan streamed its reports (10,000 adapters: json
921 MB, text 162 MB). Target: json and text each under 150 MB. Exit 0 when met, 1 when missed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.scan_speed import build_tree  # noqa: E402

BEFORE_MB = {"json": 921, "text": 162}  # 10,000 adapters, issue 14
TARGET_MB = 150
PEAK = ("import resource, sys\nfrom peftdoctor.cli.app import main\nsys.argv = ['peftdoctor'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def peak_mb(tree: str, fmt: str) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, "scan", tree, "--format", fmt, "--peft", "0.21.2"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    return int(done.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10_000)
    args = parser.parse_args()
    met = True
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(Path(tmp), args.adapters)
        print(f"{args.adapters} adapters; peak RSS of one `peftdoctor scan` process")
        for fmt in ("json", "text"):
            mb, seconds = peak_mb(tmp, fmt)
            met = met and mb < TARGET_MB
            print(f"  --format {fmt:<5} {mb:7.0f} MB  ({seconds:.1f} s)   before: {BEFORE_MB[fmt]} MB at 10,000")
    print("target met" if met else f"target missed: under {TARGET_MB} MB")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
