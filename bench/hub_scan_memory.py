"""Peak memory of `peftdoctor scan --hub AUTHOR` as the author's listing grows, json and text.

    python bench/hub_scan_memory.py [--repos 1000 4000] [--code DIR]

Serves REPOS tiny adapter repos (bench/hub_scan_speed.py's) from the loopback test hub in this process, then
runs `python -m peftdoctor scan --hub bench-org --format F` in a fresh child per size and format (stdout to
/dev/null, an empty cache each time) and prints that child's peak RSS, then how much it grows per 1,000 repos
between the smallest and the largest listing, and that growth carried to 100,000 repos (the outside test
pass measured 300-424 MB there, against the README's "under 70 MB"). `--code DIR` imports peftdoctor from
another checkout (to measure an older commit the same way). Target: the largest listing under 70 MB, and
under 0.5 MB more per 1,000 repos. Exit 0 when met, 1 when missed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hub_scan_speed import AUTHOR, build_repos  # noqa: E402
from tests.hub_server import serve_repos  # noqa: E402

TARGET_MB = 70
TARGET_GROWTH_MB = 0.5  # per 1,000 repos
PEAK = ("import resource, sys\nfrom peftdoctor.cli.app import main\nsys.argv = ['peftdoctor'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def peak_mb(endpoint: str, cache: Path, fmt: str, code: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("HF_") and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    env.update(PYTHONPATH=str(code), HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(cache / "home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1",
               no_proxy="127.0.0.1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, "scan", "--hub", AUTHOR, "--format", fmt, "--peft", "0.21.2"],
                          cwd=cache.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False, timeout=3600)
    return int(done.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout peftdoctor is imported from")
    args = parser.parse_args()
    sizes = sorted(args.repos)
    peaks: dict[tuple[str, int], float] = {}
    print(f"peak RSS of one `peftdoctor scan --hub` process (peftdoctor from {args.code})")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="peftdoctor-hub-memory-") as tmp:
            repos = build_repos(Path(tmp) / "repos", size)
            with serve_repos(repos, lifetime=3600) as endpoint:
                for fmt in ("json", "text"):
                    mb, seconds = peak_mb(endpoint, Path(tmp) / f"cache-{fmt}", fmt, args.code)
                    peaks[fmt, size] = mb
                    print(f"  {size:>7} repos  --format {fmt:<5} {mb:7.0f} MB  ({seconds:.1f} s)")
    met = all(mb < TARGET_MB for mb in peaks.values())
    if len(sizes) > 1:
        for fmt in ("json", "text"):
            growth = (peaks[fmt, sizes[-1]] - peaks[fmt, sizes[0]]) / (sizes[-1] - sizes[0]) * 1000
            met = met and growth < TARGET_GROWTH_MB
            print(f"  --format {fmt:<5} grows {growth:.2f} MB per 1,000 repos: "
                  f"{peaks[fmt, sizes[-1]] + growth * (100_000 - sizes[-1]) / 1000:.0f} MB at 100,000 repos")
    print("target met" if met else f"target missed: under {TARGET_MB} MB and {TARGET_GROWTH_MB} MB per 1,000 repos")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
