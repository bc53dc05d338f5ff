"""What the adapter's tensor values say (PD211-PD215): read by io/values.py without torch.

peft loads every one of these adapters without a word: NaN/Inf weights make the outputs NaN, an
adapter whose lora_B matrices are all zero computes exactly the base (saved before training), and
ZeRO-3 saves without gathering hold empty tensors that fail with a size mismatch naming shape [0].
"""
from __future__ import annotations

from peftdoctor.io.safetensors import undeclared_bytes
from peftdoctor.model.adapter import SAFETENSORS_NAME, Adapter
from peftdoctor.model.findings import Finding
from peftdoctor.peft.tensor_names import B_ROLES
from peftdoctor.rules.registry import rule

ZERO3_FIX = ("re-save with the parameters gathered: set \"stage3_gather_16bit_weights_on_model_save\": true in the "
             "DeepSpeed config and save with trainer.save_model() (or save_pretrained(state_dict="
             "accelerator.get_state_dict(model))); a ZeRO-3 checkpoint can also be consolidated with zero_to_fp32.py")


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def value_findings(adapter: Adapter) -> list[Finding]:
    header, values = adapter.header, adapter.values
    if header is None:
        return []
    findings: list[Finding] = []
    extra = undeclared_bytes(header)
    if extra:
        findings.append(rule("PD215").finding(
            f"{SAFETENSORS_NAME} holds {extra} bytes after the tensors its header declares: safetensors refuses "
            "it (\"incomplete metadata, file not fully covered\")",
            "re-copy or re-save the weights: the file was appended to or only partly overwritten",
            file=SAFETENSORS_NAME))
    empty = sorted(name for name, info in header.tensors.items() if 0 in info.shape)
    if empty:
        findings.append(rule("PD214").finding(
            f"{len(empty)} of {len(header.tensors)} tensors are empty ({_some(empty)} has shape "
            f"{list(header.tensors[empty[0]].shape)}): the adapter was saved under DeepSpeed ZeRO-3 without gathering "
            "its sharded parameters; loading fails with a size mismatch", ZERO3_FIX, file=SAFETENSORS_NAME))
    if values is None:
        return findings
    bad = {name: v.nonfinite for name, v in values.tensors.items() if v.nonfinite}
    if bad:
        findings.append(rule("PD211").finding(
            f"{len(bad)} tensor(s) hold {sum(bad.values())} NaN or infinite values ({_some(sorted(bad))}): peft "
            "loads them and every output becomes NaN or inf", "retrain from a checkpoint saved before the loss "
            "diverged (a lower learning rate, bf16 or fp32 instead of fp16 training)", file=SAFETENSORS_NAME))
    findings += _zero_b_findings(adapter)
    return findings


def _zero_b_findings(adapter: Adapter) -> list[Finding]:
    """lora_B (and lora_embedding_B) start at zero; a module whose B is still exactly zero adds nothing."""
    values = adapter.values
    assert values is not None
    modules: dict[str, bool] = {}
    for key, name in adapter.tensors.items():
        seen = values.tensors.get(key)
        if name.role in B_ROLES and name.param in ("weight", "") and seen is not None and seen.numel:
            modules[name.module] = modules.get(name.module, True) and seen.all_zero
    zero = sorted(m for m, is_zero in modules.items() if is_zero)
    if not zero:
        return []
    if len(zero) == len(modules):
        return [rule("PD212").finding(
            f"every lora_B of the {len(modules)} adapted modules is exactly zero: the adapter computes exactly the "
            "base model (saved before training, or its LoRA weights never received gradients)",
            "save the adapter after training (trainer.save_model() after trainer.train()); check that the learning "
            "rate is not 0 and that the LoRA parameters are trainable (model.print_trainable_parameters())",
            file=SAFETENSORS_NAME)]
    return [rule("PD213").finding(
        f"{len(zero)} of {len(modules)} adapted modules have an all-zero lora_B ({_some(zero)}): those modules "
        "compute the base", "check that those layers received gradients (frozen, or not reached by the loss)",
        file=SAFETENSORS_NAME)]
