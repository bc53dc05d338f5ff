"""What reading a 1 GB adapter's values costs `check`, next to the same check on the header alone.

    python bench/value_scan_speed.py [--size-gb 1.0] [--runs 5] [--dir /tmp]

Writes a LoRA adapter_model.safetensors of about --size-gb (bfloat16 and float32 variants, random
finite values, lora_B not zero) beside the fixture's adapter_config.json, then times `check()` in
process (schemas already loaded, so only the adapter's own work is measured): once as it runs
(header + values, io/values.py), once with the value scan switched off. The difference is the value
scan; the target (issue: "on a 1 GB adapter, the value scan adds at most 2 s (2 cores)") is printed
beside it. The page cache is warm after the first run, as it is for a file just written or copied.
Exit 0 when the target is met.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peftdoctor.io import adapter as reader  # noqa: E402
from peftdoctor.ops.check import check  # noqa: E402

TARGET_S = 2.0
FIXTURE = ROOT / "fixtures" / "tiny-llama-lora"


def write_adapter(directory: Path, dtype: str, size: int) -> None:
    """A header of LoRA A/B pairs (4096 x 16) filling `size` bytes, the data random but finite."""
    element = {"BF16": 2, "F32": 4}[dtype]
    per_pair = 2 * 4096 * 16 * element
    pairs = max(1, size // per_pair)
    header, offset = {}, 0
    for i in range(pairs):
        for role, shape in (("lora_A", [16, 4096]), ("lora_B", [4096, 16])):
            nbytes = shape[0] * shape[1] * element
            header[f"base_model.model.model.layers.{i}.self_attn.q_proj.{role}.weight"] = {
                "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    raw = __import__("json").dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    directory.mkdir(parents=True)
    shutil.copy(FIXTURE / "adapter_config.json", directory / "adapter_config.json")
    # Bytes whose exponent bits are never all set: 0x3C/0x3F patterns are small finite numbers.
    block = bytes([0x12, 0x3C] * (1 << 19)) if dtype == "BF16" else bytes([0x12, 0x34, 0x56, 0x3C] * (1 << 18))
    with open(directory / "adapter_model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            chunk = block[:min(left, len(block))]
            fh.write(chunk)
            left -= len(chunk)


def timed(directory: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        check(str(directory), peft="0.21.2")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="peftdoctor-values-", dir=args.dir))
    met = True
    try:
        check(str(FIXTURE), peft="0.21.2")  # schemas and tables loaded once, outside the timings
        print(f"{'adapter':<22} {'header+values s':>15} {'header only s':>14} {'value scan s':>13}  target")
        for dtype in ("BF16", "F32"):
            directory = root / dtype
            write_adapter(directory, dtype, int(args.size_gb * 2**30))
            size = (directory / "adapter_model.safetensors").stat().st_size
            timed(directory, 1)  # warm the page cache
            full = timed(directory, args.runs)
            scan = reader.values_scan
            reader.values_scan = lambda fh, header: None  # the same check without reading values
            try:
                header_only = timed(directory, args.runs)
            finally:
                reader.values_scan = scan
            extra = full - header_only
            met = met and extra <= TARGET_S
            print(f"{dtype + f' {size / 2**30:.2f} GiB':<22} {full:>15.2f} {header_only:>14.2f} {extra:>13.2f}  "
                  f"<= {TARGET_S} s: {'met' if extra <= TARGET_S else 'NOT met'}")
            shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average now: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
