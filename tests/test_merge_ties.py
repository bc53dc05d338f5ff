"""Adapters on a tied weight (Gemma's lm_head and embed_tokens, Gemma2's embed_tokens, GPT-2's wte).

peft's own merge_and_unload adds the delta into the one tensor the tie shares, so the partner changes too
and the merged model computes something else than base + adapter; `peftdoctor merge` unties first. Shown
here side by side on tiny random models, with what each output claims; and verify, which once crashed on
Gemma's embed_scale buffer left on the meta device, judging both merges in its --merged and
layer-by-layer paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.merge import stream_merge  # noqa: E402
from peftdoctor.verification import large, render_text, verify  # noqa: E402
from tests import adapters as A  # noqa: E402

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# case -> (base, target_modules, the adapted tied tensor, its partner)
CASES = {
    "gemma-embed_tokens": ("gemma", ["embed_tokens", "q_proj"], EMBED, HEAD),
    "gemma-lm_head": ("gemma", ["lm_head", "q_proj"], HEAD, EMBED),
    "gemma2-embed_tokens": ("gemma2", ["embed_tokens", "q_proj"], EMBED, HEAD),
    "gpt2-wte": ("gpt2", ["wte", "c_attn"], "transformer.wte.weight", HEAD),
    "bart-shared": ("bart", ["shared", "q_proj"], "model.shared.weight",
                    "model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight, lm_head.weight"),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ties")
    return {"gemma": A.make_gemma_base(root / "gemma"), "gemma2": A.make_gemma_base(root / "gemma2", generation=2),
            "gpt2": A.make_gpt2_base(root / "gpt2"), "bart": A.make_bart_base(root / "bart")}


def _logits(model: Any) -> Any:
    ids = torch.arange(3, 40).reshape(1, -1)
    decoder = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=ids, **decoder).logits


def _untied(model: Any, adapted: str) -> Any:
    """peft's advice for an adapted tied weight: give every name sharing its tensor a copy of its own."""
    shared = model.get_parameter(adapted)
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        if param is shared and name != adapted:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(param.detach().clone()))
    model.config.tie_word_embeddings = False
    return model


def _tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v for p in sorted(directory.glob("*.safetensors")) for k, v in load_file(str(p)).items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_merge_changes_the_tie_partner_peftdoctor_merge_does_not(case: str, bases: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    from peft import PeftModel
    family, targets, adapted, partners = CASES[case]
    partner = partners.split(", ")[-1]
    base = bases[family]
    adapter = A.make_lora_adapter(tmp_path / "adapter", base, target_modules=targets)
    original = A.load_base(base).state_dict()[partner].clone()
    wanted = _logits(PeftModel.from_pretrained(A.load_base(base), str(adapter)))  # base + adapter, unmerged
    # peft's own merge on the tied base: the partner takes the delta too, and the logits move.
    theirs = PeftModel.from_pretrained(A.load_base(base), str(adapter)).merge_and_unload()
    assert not torch.equal(theirs.state_dict()[partner], original)
    assert (_logits(theirs) - wanted).abs().max() > 1e-2
    # peftdoctor's merge: untied, the partner keeps the base's values, the logits are base + adapter's.
    report = stream_merge(str(adapter), str(base), str(tmp_path / "ours"))
    ours = A.load_base(tmp_path / "ours")
    assert torch.equal(ours.state_dict()[partner], original)
    assert (_logits(ours) - wanted).abs().max() < 1e-5
    # What it claims: equal to peft's merge of the base untied first (true bit for bit, below), and the tie named.
    assert f"of the base with {partners} untied from {adapted} first" in report.equality
    assert f"peft's merge_and_unload on the tied base would also change {partners}, which share" in report.equality
    untied = _untied(A.load_base(base), adapted)
    PeftModel.from_pretrained(untied, str(adapter)).merge_and_unload().save_pretrained(str(tmp_path / "ref"))
    mine, reference = _tensors(tmp_path / "ours"), _tensors(tmp_path / "ref")
    assert set(mine) == set(reference) and all(torch.equal(mine[k], reference[k]) for k in mine)


def test_an_untied_merge_claims_plain_equality(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["gemma"], target_modules=["q_proj"])
    report = stream_merge(str(adapter), str(bases["gemma"]), str(tmp_path / "out"))
    assert report.untied == () and report.equality.startswith(
        "bit-identical to peft's merge_and_unload + save_pretrained on cpu in auto:") and "tied" not in report.equality


@pytest.mark.parametrize("family", ["gemma", "gemma2"])
def test_verify_judges_gemma_with_embed_tokens_adapted(family: str, bases: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--merged on peftdoctor's merge, and the layer-by-layer path with --out: both probe the embedding
    through Gemma's scaled embedding (its embed_scale buffer once stayed on the meta device: a crash)."""
    base = bases[family]
    adapter = A.make_lora_adapter(tmp_path / "adapter", base, target_modules=["embed_tokens", "q_proj"])
    stream_merge(str(adapter), str(base), str(tmp_path / "ours"))
    report = verify(str(adapter), base=str(base), merged=str(tmp_path / "ours"))
    assert report.verdict == "verified", render_text(report)
    monkeypatch.setenv(large.BUDGET_VARIABLE, "10000")  # under the base, over its largest tensor
    layered = verify(str(adapter), base=str(base), out=str(tmp_path / "layered"))
    assert layered.verdict == "verified", render_text(layered)
    assert [s.name for s in layered.steps][-2:] == ["merge (streaming)", "layer parity"]
    assert layered.parity[0].passed and "3 targeted tensors (3 right)" in layered.step("layer parity").detail


def test_pd317_on_peft_merge_of_a_tied_base_names_the_tie(bases: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    base = bases["gemma"]
    adapter = A.make_lora_adapter(tmp_path / "adapter", base, target_modules=["embed_tokens", "q_proj"])
    PeftModel.from_pretrained(A.load_base(base), str(adapter)).merge_and_unload().save_pretrained(str(tmp_path / "m"))
    report = verify(str(adapter), base=str(base), merged=str(tmp_path / "m"))
    found = [f for f in report.findings if f.code == "PD317"]
    assert report.verdict == "failed" and [f.key for f in found] == [HEAD], render_text(report)
    assert f"{HEAD} is tied to {EMBED}, which the adapter changes" in found[0].fix
    assert "untie" in found[0].fix and "peftdoctor merge" in found[0].fix
