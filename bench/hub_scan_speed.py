"""How many Hub repos per second does `peftdoctor scan --hub AUTHOR` check?

    python bench/hub_scan_speed.py [--repos 300] [--workers 16]

Serves REPOS tiny adapter repos (the bundled example's weights, each with its own config) from the loopback
test hub (tests/hub_server.py) in this process, then runs `scan --hub` in a child process against it with
huggingface_hub's real client, an empty cache and no token: listing, config download (which fills the cache)
and a range read of each weights header. Prints repos/s for that cold run and for a second, warm run (configs
already cached for those commits), next to the target from the issue: at least 50 repos per second, with
bounded memory (the child's peak RSS is printed). Exit 0 when the cold run meets it, 1 when it misses.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hub_server import serve_repos  # noqa: E402 - the repo's own test hub

EXAMPLE = ROOT / "fixtures" / "tiny-llama-lora"
TARGET_PER_SECOND = 50
AUTHOR = "bench-org"

_CHILD = """\
import json, resource, sys, time
from peftdoctor.ops.hub_scan import scan_hub
started = time.perf_counter()
result = scan_hub(sys.argv[1], peft=sys.argv[2], workers=int(sys.argv[3]))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "reports": len(result.reports), "unusable": result.unusable[:3],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_repos(root: Path, count: int) -> dict[str, Path]:
    base = json.loads((EXAMPLE / "adapter_config.json").read_text())
    repos = {}
    for i in range(count):
        directory = root / f"adapter-{i:04d}"
        directory.mkdir(parents=True)
        config = dict(base, lora_alpha=8 + i % 13, target_modules=["q_proj", "v_proj", "k_proj"][: 1 + i % 3])
        (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
        shutil.copy(EXAMPLE / "adapter_model.safetensors", directory)
        repos[f"{AUTHOR}/adapter-{i:04d}"] = directory
    return repos


def run_scan(endpoint: str, cache: Path, workers: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("HF_") and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(cache / "home"),
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    done = subprocess.run([sys.executable, "-c", _CHILD, AUTHOR, "0.21.2", str(workers)], capture_output=True,
                          text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"scan failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=300)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peftdoctor-hub-bench-") as tmp:
        repos = build_repos(Path(tmp) / "repos", args.repos)
        served: Counter = Counter()
        with serve_repos(repos, served=served, lifetime=900) as endpoint:
            cold = run_scan(endpoint, Path(tmp) / "cache", args.workers)
            weights_bytes = sum(n for key, n in served.items() if key.endswith(".safetensors"))
            warm = run_scan(endpoint, Path(tmp) / "cache", args.workers)
    if cold["reports"] != args.repos:
        print(f"only {cold['reports']} of {args.repos} repos were checked; unusable: {cold['unusable']}")
        return 1
    rate, warm_rate = args.repos / cold["seconds"], args.repos / warm["seconds"]
    print(f"scan --hub: {args.repos} repos, {args.workers} workers")
    print(f"  cold cache: {cold['seconds']:.2f} s = {rate:.0f} repos/s (target >= {TARGET_PER_SECOND})")
    print(f"  warm cache: {warm['seconds']:.2f} s = {warm_rate:.0f} repos/s")
    print(f"  weights bytes served (cold run, header range reads): {weights_bytes}; "
          f"peak RSS {cold['peak_rss_mb']:.0f} MB")
    print("PASS" if rate >= TARGET_PER_SECOND else "MISS")
    return 0 if rate >= TARGET_PER_SECOND else 1


if __name__ == "__main__":
    raise SystemExit(main())
