"""How many adapters per second does `peftdoctor scan` check, next to peft's own config loader?

    python bench/scan_speed.py [--adapters 2000]

Builds a tree like a training run's output: ADAPTERS checkpoint directories, each holding a copy
of the bundled example's weights and a config that varies (rank, alpha, targets, extra keys), so
no two configs are equal. Then, in this one process, times `peftdoctor.scan.scan(tree)` and a loop
of `PeftConfig.from_pretrained` over the same directories (after peft is imported, so its import
is not counted against it). Target (from the issue): at least 1,000 adapters per second.
Exit 0 when met, 1 when missed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fixtures" / "tiny-llama-lora"
TARGET_PER_SECOND = 1000


def build_tree(root: Path, count: int) -> list[Path]:
    base = json.loads((EXAMPLE / "adapter_config.json").read_text())
    made = []
    for i in range(count):
        directory = root / f"run-{i % 7}" / f"checkpoint-{i * 50}"
        directory.mkdir(parents=True)
        config = dict(base, lora_alpha=8 + i % 13, lora_dropout=round((i % 10) / 100, 2),
                      target_modules=["q_proj", "v_proj", "k_proj"][: 1 + i % 3])
        if i % 4 == 0:
            config["use_rslora"] = True
        (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
        shutil.copy(EXAMPLE / "adapter_model.safetensors", directory)
        made.append(directory)
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_tree(Path(tmp), args.adapters)
        from peftdoctor.ops.scan import scan

        start = time.perf_counter()
        result = scan(tmp)
        ours = time.perf_counter() - start
        assert len(result.reports) == args.adapters, "scan missed adapters"

        import_start = time.perf_counter()
        from peft import PeftConfig

        peft_import = time.perf_counter() - import_start
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for directory in dirs:
                PeftConfig.from_pretrained(str(directory))
        theirs = time.perf_counter() - start

    ours_rate, theirs_rate = args.adapters / ours, args.adapters / theirs
    print(f"{args.adapters} adapters, one process, python {sys.version.split()[0]}\n")
    print(f"{'tool':<44}{'seconds':>9}{'adapters/s':>12}")
    print(f"{'peftdoctor scan (full check + 36-release compat)':<44}{ours:>9.3f}{ours_rate:>12.0f}")
    print(f"{'loop of peft PeftConfig.from_pretrained':<44}{theirs:>9.3f}{theirs_rate:>12.0f}")
    print(f"{'  (peft import, not counted above)':<44}{peft_import:>9.3f}")
    met = ours_rate >= TARGET_PER_SECOND
    print(f"\ntarget: {'met' if met else 'MISSED'}  peftdoctor scan >= {TARGET_PER_SECOND} adapters/s: "
          f"{ours_rate:.0f}/s")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
