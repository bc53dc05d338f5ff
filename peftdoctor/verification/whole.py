"""The in-memory path: a base that fits in memory is loaded whole, with transformers and peft.

Load base + adapter and probe them (the reference); merge into a fresh copy of the base (in float32 by
default, then cast), probe the merged model; save it (into --out, or a temporary directory), reload it
with transformers and probe it again. Each model is released before the next one is loaded.
torch, transformers and peft are imported inside the functions.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.rules.registry import rule
from peftdoctor.verification import base as basemod
from peftdoctor.verification import facts as adapter_facts
from peftdoctor.verification.merge import merge, tied_and_adapted, untie
from peftdoctor.verification.probe import compare, forward
from peftdoctor.verification.save import save_merged
from peftdoctor.verification.steps import (
    Run,
    free,
    judge_merged_output,
    load_failure_findings,
    note_untrained_head,
    probe_adapted,
)


def verify_in_memory(run: Run, facts: Adapter, base: Base, out: Optional[Path], dtype: str, merge_dtype: Optional[str],
                     device: str, tol: float, trust_remote_code: bool, state: dict[str, Any]) -> None:
    inputs, reference = _adapted_reference(run, facts, base, dtype, device, tol, trust_remote_code)
    free(device)  # base + adapter were released on return
    if not adapter_facts.mergeable(facts):
        run.findings.append(rule("PD308").finding(
            f"{facts.peft_type} adds virtual tokens or prefixes, not weight deltas: there is nothing to merge",
            "deploy base + adapter with PeftModel.from_pretrained"))
        return
    quantized_note = " (the base's 4-bit forward)" if base.bnb_quantized else ""
    merged = run.step("merge", "merging the adapter into the base weights",
                      lambda: _merge(run, base, facts, dtype, merge_dtype or dtype, device, trust_remote_code, state))
    output = run.step("probe merged", "running the probe batch through the merged model",
                      lambda model=merged: (forward(model, inputs), ""))
    judge_merged_output(run, f"merged vs adapted{quantized_note}", output, reference, tol,
                        "deploy with PeftModel instead, or merge in float32 (--dtype float32) and compare again")
    tokenizer, source = basemod.load_tokenizer(facts, base, trust_remote_code)
    if tokenizer is None:
        run.findings.append(rule("PD311").finding("neither the adapter nor the base has a tokenizer that loads",
                                                  "save the tokenizer beside the adapter"))
    with tempfile.TemporaryDirectory(prefix="peftdoctor-verify-") as scratch:
        target = out if out is not None else Path(scratch) / "merged"
        where = run.step("save", "saving the merged model (safetensors)",
                         lambda model=merged: (save_merged(model, tokenizer, base, target),
                                               f"tokenizer from {source}" if source else "no tokenizer"))
        if out is not None:
            state["out"] = str(where)
        else:
            run.notes.append("no --out given: the merged model was saved to a temporary directory for the "
                             "reload check and deleted; pass --out DIR to keep it")
        del merged
        free(device)
        reloaded = run.step("reload", "reloading the saved model with transformers",
                            lambda: _reload(where, facts, dtype, device, trust_remote_code, inputs))
    again = compare(f"reloaded vs adapted{quantized_note}", reloaded, reference, tol)
    run.parity.append(again)
    if not again.passed:
        run.findings.append(rule("PD305").finding(
            f"the saved model, reloaded with {basemod.auto_class_name(facts.task_type)}, differs from base + "
            f"adapter by {again.max_rel:.3g} of the logit scale (tolerance {tol:.3g})",
            "a tied or resized layer is restored differently on reload: untie it in config.json"))


def _adapted_reference(run: Run, facts: Adapter, base: Base, dtype: str, device: str, tol: float,
                       trust_remote_code: bool) -> tuple[Any, Any]:
    """Load the base, attach the adapter, probe: the reference the merge must match.
    Returns (inputs, reference logits); the models are released on return."""
    loaded = run.step("load base", f"loading base {base.display} ({dtype}, {device})",
                      lambda: _load(base, facts, dtype, device, trust_remote_code, quantized=True))
    note_untrained_head(run, loaded.missing, facts)
    resized = basemod.resize_for_adapter(loaded.model, facts)
    if resized:
        run.findings.append(rule("PD309").finding(
            f"the adapter was saved for {resized[1]} vocabulary rows, the base has {resized[0]}: embeddings resized",
            "ship the tokenizer with the added tokens beside the adapter (the merged model carries it)"))
    peft_model = run.step("load adapter", "loading the adapter with PeftModel.from_pretrained",
                          lambda: _load_adapter(run, loaded.model, facts))
    return run.step("probe adapted", "running the probe batch through base + adapter",
                    lambda: probe_adapted(run, peft_model, facts, device, tol))


def _load(base: Base, facts: Adapter, dtype: str, device: str, trust_remote_code: bool,
          quantized: bool) -> tuple[basemod.LoadedBase, str]:
    with basemod.remote_code_refusal_in_one_line(base, trust_remote_code):
        loaded = basemod.load_base(base, facts, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                   quantized=quantized)
    kind = "4-bit/8-bit (bitsandbytes)" if base.bnb_quantized and quantized else dtype
    return loaded, f"{type(loaded.model).__name__} ({basemod.auto_class_name(facts.task_type)}), {kind}"


def _load_adapter(run: Run, model: Any, facts: Adapter) -> tuple[Any, str]:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(facts.directory), is_trainable=False)
    except Exception as exc:
        run.findings.extend(load_failure_findings(facts, exc))
        raise
    peft_model.eval()
    return peft_model, type(peft_model).__name__


def _merge(run: Run, base: Base, facts: Adapter, dtype: str, merge_dtype: str, device: str,
           trust_remote_code: bool, state: dict[str, Any]) -> tuple[Any, str]:
    from peft import PeftModel

    loaded = basemod.load_base(base, facts, dtype=merge_dtype, device=device, trust_remote_code=trust_remote_code,
                               quantized=False)
    model = loaded.model
    basemod.resize_for_adapter(model, facts)
    tied = tied_and_adapted(model, facts)
    if tied:
        untie(model)
        run.findings.append(rule("PD307").finding(
            f"{tied[0]} and {tied[1]} share one matrix and the adapter changes it: the merged model is saved "
            "with tie_word_embeddings false, so a reload keeps both trained matrices",
            "nothing to do; a loader that forces tying would lose the difference", key="tie_word_embeddings"))
    if base.bnb_quantized:
        state["merge_base"] = ("dequantized 4-bit weights (what the adapter was trained against); "
                               "full-precision weights: not available, the base is saved quantized")
        run.findings.append(rule("PD310").finding(
            "the base is saved quantized: the adapter was merged into its dequantized weights, not re-quantized",
            "deploy the merged model in the dtype shown; quantize it again only after checking its parity"))
    else:
        state["merge_base"] = f"{base.display} weights in {merge_dtype}"
    peft_model = PeftModel.from_pretrained(model, str(facts.directory), is_trainable=False)
    merged = merge(peft_model)
    if merge_dtype != dtype:
        merged = merged.to(basemod.torch_dtype(dtype))
    merged.eval()
    return merged, f"merged in {merge_dtype}" + (f", cast to {dtype}" if merge_dtype != dtype else "") + \
        (", safe_merge NaN check passed")


def _reload(directory: Path, facts: Adapter, dtype: str, device: str, trust_remote_code: bool,
            inputs: dict[str, Any]) -> tuple[Any, str]:
    import transformers

    cls = getattr(transformers, basemod.auto_class_name(facts.task_type))
    model = cls.from_pretrained(str(directory), dtype=basemod.torch_dtype(dtype),
                                trust_remote_code=trust_remote_code).to(device)
    model.eval()
    output = forward(model, inputs)
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", None) \
        if hasattr(model.config, "get_text_config") else getattr(model.config, "tie_word_embeddings", None)
    del model
    return output, f"{cls.__name__}, tie_word_embeddings={tied}"
