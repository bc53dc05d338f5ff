"""verify on a base too large to load (PEFTDOCTOR_MEMORY_BUDGET forces it): layer-by-layer parity.

The streamed merge in --out (or, without --out, each module merged on the fly) is judged module by
module against base + the adapter's delta and on a seeded probe against peft's unmerged forward;
the verdict is `verified` or `failed` with its figures, never `not-verified`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.verification import large, render_text, verify
from tests import adapters as A

STEPS = ["resolve base", "device", "memory", "merge (streaming)", "layer parity"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("large")
    llama, gpt2 = A.make_llama_base(root / "llama"), A.make_gpt2_base(root / "gpt2")
    return {"llama": llama, "gpt2": gpt2, "dora": A.make_dora_adapter(root / "dora", llama),
            "rslora": A.make_rslora_adapter(root / "rslora", llama),
            "gpt2-lora": A.make_lora_adapter(root / "gpt2-lora", gpt2, lora_bias=True)}


@pytest.fixture()
def small_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(large.BUDGET_VARIABLE, "1000")


@pytest.mark.parametrize("kind", ["dora", "rslora", "gpt2-lora"])
def test_streamed_merge_is_verified_layer_by_layer(made: dict[str, Path], tmp_path: Path, small_memory: None,
                                                   kind: str) -> None:
    base = made["gpt2" if kind.startswith("gpt2") else "llama"]
    report = verify(str(made[kind]), base=str(base), out=str(tmp_path / "merged"))
    assert report.verdict == "verified", render_text(report)
    assert [s.name for s in report.steps] == STEPS and report.device == "cpu"
    assert "verified layer by layer" in report.step("memory").detail
    parity = report.parity[0]
    assert parity.passed and parity.max_rel <= parity.tolerance and parity.top1_agreement == 1.0
    assert parity.name.startswith("layer-wise merged vs adapted")
    assert "targeted tensors" in report.step("layer parity").detail
    assert (tmp_path / "merged" / "model.safetensors").is_file() and report.out == str(tmp_path / "merged")


def test_without_out_each_module_is_merged_on_the_fly(made: dict[str, Path], small_memory: None) -> None:
    report = verify(str(made["dora"]), base=str(made["llama"]))
    assert report.verdict == "verified", render_text(report)
    assert [s.name for s in report.steps] == ["resolve base", "device", "memory", "layer parity"]
    assert any("merged on the fly" in n for n in report.notes) and report.out is None


def test_a_wrong_streamed_merge_fails_with_its_figures(made: dict[str, Path], tmp_path: Path, small_memory: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge that goes wrong while streaming (here: the delta computed at half scale) is caught."""
    from peftdoctor.merge import layer

    real = layer.merge_module

    def half(skeleton: Any, config: Any, module: str, params: dict[str, Any], tensors: dict[str, Any],
             device: str) -> dict[str, Any]:
        start = {n: t.clone() for n, t in params.items()}
        done = real(skeleton, config, module, params, tensors, device)
        return {n: start[n] + (t - start[n]) / 2 for n, t in done.items()}

    monkeypatch.setattr(layer, "merge_module", half)  # what the stream calls for DoRA, lora_bias, ...
    from peftdoctor.merge import delta

    real_into = delta.merge_into
    # ... and merge/delta.py's torch path for plain LoRA and rsLoRA, this adapter's: half the delta too.
    monkeypatch.setattr(delta, "merge_into", lambda weight, lora, pool=None: real_into(weight, delta.PlainLora(
        lora.kind, lora.A, lora.B, lora.scaling / 2)))
    # The judge's reference stays peft's own merge.
    from peftdoctor.verification import merged as judged

    monkeypatch.setattr(judged, "reference", _reference_with(real))
    report = verify(str(made["rslora"]), base=str(made["llama"]), out=str(tmp_path / "merged"))
    assert report.verdict == "failed", render_text(report)
    wrong = [f for f in report.findings if f.code == "PD314"]
    assert len(wrong) == 4 and all("0.5 times its scale" in f.message for f in wrong)
    assert not report.parity[0].passed and report.parity[0].max_rel > report.parity[0].tolerance


def _reference_with(real_merge: Any) -> Any:
    from peftdoctor.verification import layerwise

    original = layerwise.reference

    def reference(*args: Any, **kwargs: Any) -> Any:
        from peftdoctor.merge import layer

        patched, layer.merge_module = layer.merge_module, real_merge
        try:
            return original(*args, **kwargs)
        finally:
            layer.merge_module = patched
    return reference
