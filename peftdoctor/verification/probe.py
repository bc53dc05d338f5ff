"""One seeded probe batch, the forward pass that reads the output to compare, and the comparison.

The probe is random token ids from a fixed seed rather than text: it needs no tokenizer, it is the
same on every machine, and it always includes the last vocabulary row so that tokens added in
training (a resized embedding) are exercised too.
"""
from __future__ import annotations

from typing import Any, Optional

from peftdoctor.verification.result import Parity

PROBE_SEED, PROBE_BATCH, PROBE_LENGTH = 1234, 2, 12
# Bound on max |difference| / max |reference|: float32 merges differ by summation order only;
# half precisions hold about 3 (bfloat16) or 4 (float16) significant digits after several layers.
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}


def probe_inputs(model: Any, task_type: Optional[str], device: str) -> dict[str, Any]:
    import torch

    rows = int(model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(PROBE_SEED)
    ids = torch.randint(0, rows, (PROBE_BATCH, PROBE_LENGTH), generator=generator)
    ids[:, -1] = rows - 1
    inputs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if task_type == "SEQ_2_SEQ_LM" or getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.randint(0, rows, (PROBE_BATCH, PROBE_LENGTH // 2),
                                                    generator=generator).to(device)
    return inputs


def forward(model: Any, inputs: dict[str, Any]) -> Any:
    """The output that a deployment consumes: logits, else the last hidden state; float32 on CPU."""
    import torch

    with torch.no_grad():
        output = model(**inputs)
    for name in ("logits", "start_logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if value is not None:
            return value.detach().float().cpu()
    return output[0].detach().float().cpu()


def _aligned(a: Any, b: Any) -> tuple[Any, Any]:
    # Prompt learning prepends virtual tokens to the sequence: compare the real positions only.
    if a.dim() >= 3 and b.dim() >= 3 and a.shape[1] != b.shape[1]:
        n = min(a.shape[1], b.shape[1])
        return a[:, -n:], b[:, -n:]
    return a, b


def compare(name: str, output: Any, reference: Any, tolerance: float) -> Parity:
    import torch

    output, reference = _aligned(output, reference)
    if output.shape != reference.shape:
        return Parity(name, float("inf"), float("inf"), 0.0, tolerance, False)
    diff = (output - reference).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    if not torch.isfinite(output).all():
        max_abs = float("inf")
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    top1 = float((output.argmax(-1) == reference.argmax(-1)).float().mean()) if output.numel() else 1.0
    return Parity(name, max_abs, max_rel, top1, tolerance, max_rel <= tolerance)
