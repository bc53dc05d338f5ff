"""verify --offload-folder on a base too large for memory (PEFTDOCTOR_MEMORY_BUDGET forces it): accelerate's
big-model loading (device_map="auto", max_memory, offload folder) instead of layer by layer.

Also what the real peft/accelerate do on such a dispatched base, which is why the path works as it does
(peftdoctor/verification/offload.py): peft's PeftModel.from_pretrained re-dispatches and fails on meta
tensors, leaves the adapter's weights on meta when it does not, and merge_and_unload puts merged layers
back in CPU memory.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from peftdoctor.verification import large, render_text, verify
from peftdoctor.verification import offload as accelerated
from tests import adapters as A

STEPS = ["resolve base", "device", "memory", "load base", "load adapter", "probe adapted", "merge (streaming)",
         "probe merged"]
# The tiny Llama is about 35 KB in float32: this budget holds its embeddings (accelerate puts them on the
# CPU) and not its layers and head, which go to disk.
BUDGET = "24000"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("offload")
    llama = A.make_llama_base(root / "llama")
    return {"llama": llama, "lora": A.make_lora_adapter(root / "lora", llama, seed=3),
            "dora": A.make_dora_adapter(root / "dora", llama)}


@pytest.fixture()
def small_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(large.BUDGET_VARIABLE, BUDGET)


@pytest.fixture()
def device_maps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each device map accelerate made for verify (the base's, then the merged model's)."""
    seen: list[dict[str, Any]] = []
    real = accelerated.describe

    def describe(device_map: dict[str, Any], folder: Any) -> str:
        seen.append(dict(device_map))
        return real(device_map, folder)

    monkeypatch.setattr(accelerated, "describe", describe)
    return seen


def test_offload_folder_loads_with_accelerate_and_verifies(made: dict[str, Path], tmp_path: Path, small_memory: None,
                                                           device_maps: list[dict[str, Any]]) -> None:
    folder = tmp_path / "offload"
    folder.mkdir()
    (folder / "theirs.txt").write_text("left alone")
    report = verify(str(made["lora"]), base=str(made["llama"]), out=str(tmp_path / "merged"),
                    offload_folder=str(folder))
    assert report.verdict == "verified", render_text(report)
    assert [s.name for s in report.steps] == STEPS and report.device == "cpu"
    assert "loaded with accelerate (device_map=auto, max_memory cpu" in report.step("memory").detail
    assert f"offload folder {folder}" in report.step("memory").detail
    loaded = report.step("load base").detail
    assert "loaded with accelerate device_map=auto: 1 module(s) on cpu, 4 offloaded to disk" in loaded, loaded
    # accelerate's own map: some modules in memory, the rest on "disk", for the base and the merged model alike.
    assert len(device_maps) == 2 and all("disk" in m.values() and "cpu" in m.values() for m in device_maps)
    assert device_maps[0]["model.embed_tokens"] == "cpu" and device_maps[0]["lm_head"] == "disk"
    parity = report.parity[0]
    assert parity.name == "merged vs adapted" and parity.passed and parity.top1_agreement == 1.0
    assert parity.max_rel <= parity.tolerance == 1e-4
    assert report.step("probe adapted").detail.startswith("adapter changes the output by")
    # --out holds the streamed merge; the offload folder is left as it was found.
    assert (tmp_path / "merged" / "model.safetensors").is_file() and report.out == str(tmp_path / "merged")
    assert sorted(p.name for p in folder.iterdir()) == ["theirs.txt"]


def test_the_merged_model_kept_equals_peft_merge(made: dict[str, Path], tmp_path: Path, small_memory: None) -> None:
    """What --out holds is peft's merge_and_unload of the whole model, tensor for tensor."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    report = verify(str(made["lora"]), base=str(made["llama"]), out=str(tmp_path / "merged"),
                    offload_folder=str(tmp_path / "offload"))
    assert report.verdict == "verified", render_text(report)
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(made["llama"]),
                                          made["lora"]).merge_and_unload()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(merged[name], tensor), name


def test_without_out_the_merge_goes_to_the_folder_and_is_removed(made: dict[str, Path], tmp_path: Path,
                                                                 small_memory: None) -> None:
    folder = tmp_path / "new-offload"  # does not exist: created for the run and removed again
    report = verify(str(made["lora"]), base=str(made["llama"]), offload_folder=str(folder))
    assert report.verdict == "verified", render_text(report)
    assert report.out is None and any(f"temporary directory in {folder}" in n for n in report.notes)
    assert not folder.exists()


def test_a_wrong_merge_fails_with_its_figures(made: dict[str, Path], tmp_path: Path, small_memory: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed merge computing the delta at half scale: the merged model's probe differs from base + adapter."""
    from peftdoctor.merge import delta

    real_into = delta.merge_into
    monkeypatch.setattr(delta, "merge_into", lambda weight, lora, pool=None: real_into(weight, delta.PlainLora(
        lora.kind, lora.A, lora.B, lora.scaling / 2)))
    report = verify(str(made["lora"]), base=str(made["llama"]), offload_folder=str(tmp_path / "offload"))
    assert report.verdict == "failed", render_text(report)
    assert [s.status for s in report.steps] == ["ok"] * len(STEPS)
    parity = report.parity[0]
    assert not parity.passed and parity.max_rel > 100 * parity.tolerance
    assert [f.code for f in report.findings] == ["PD304"] and "merged logits differ" in report.findings[0].message


def test_without_offload_folder_or_gpu_it_stays_layer_by_layer(made: dict[str, Path], small_memory: None) -> None:
    report = verify(str(made["lora"]), base=str(made["llama"]))
    assert report.verdict == "verified", render_text(report)
    assert "verified layer by layer" in report.step("memory").detail and report.step("load base") is None


def test_dora_is_verified_layer_by_layer_and_says_why(made: dict[str, Path], tmp_path: Path,
                                                      small_memory: None) -> None:
    report = verify(str(made["dora"]), base=str(made["llama"]), offload_folder=str(tmp_path / "offload"))
    assert report.verdict == "verified", render_text(report)
    assert report.step("layer parity") is not None and report.step("load base") is None
    assert any(n.startswith("--offload-folder not used (DoRA") for n in report.notes)


def test_a_base_that_fits_ignores_the_offload_folder(made: dict[str, Path], tmp_path: Path) -> None:
    report = verify(str(made["lora"]), base=str(made["llama"]), offload_folder=str(tmp_path / "offload"))
    assert report.verdict == "verified" and report.step("merge") is not None, render_text(report)
    assert "--offload-folder not used: the base fits in memory and was loaded whole" in report.notes
    assert not (tmp_path / "offload").exists()


def test_the_cli_option_and_a_bad_folder(made: dict[str, Path], tmp_path: Path) -> None:
    env = {"PEFTDOCTOR_MEMORY_BUDGET": BUDGET, "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "peftdoctor", "verify", str(made["lora"]), "--base", str(made["llama"])]
    done = subprocess.run([*command, "--offload-folder", str(tmp_path / "offload"), "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["verdict"] == "verified", done.stderr
    assert "offloaded to disk" in next(s["detail"] for s in report["steps"] if s["name"] == "load base")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    bad = subprocess.run([*command, "--offload-folder", str(a_file)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=Path(__file__).parent.parent)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [f"peftdoctor: --offload-folder {a_file}: exists and is not a directory"]


# ------------------------------------------------------------------ what peft and accelerate do by themselves


def _dispatched(base: Path, folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, device_map="auto",
                                                 max_memory={"cpu": int(BUDGET)}, offload_folder=str(folder))
    assert "disk" in model.hf_device_map.values()
    # transformers reads a safetensors base's offloaded weights in place: nothing is written to the folder.
    assert not list(folder.iterdir())
    return model


def _probe(model: Any) -> Any:
    ids = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_peft_alone_cannot_take_the_adapter_onto_an_offloaded_base(made: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """PeftModel.from_pretrained re-dispatches a base whose hf_device_map holds "cpu"/"disk", with a device map
    inferred from the machine's memory, not the base's: the tiny model fits the CPU, so dispatch_model calls
    model.to("cpu") on the parameters left on the meta device. Before that, it rebuilds an offload index from
    the hooks and its _update_offload writes a copy of the base's shard (keys renamed) at the shard's absolute
    path made relative: under the working directory (with the working directory "/", over the base itself)."""
    import peft

    monkeypatch.chdir(tmp_path)
    shard = made["llama"] / "model.safetensors"
    before = shard.read_bytes()

    meta_no_op = "to a meta parameter in the current model, which is a no-op"
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"), \
            pytest.warns(UserWarning, match=meta_no_op):
        peft.PeftModel.from_pretrained(_dispatched(made["llama"], tmp_path / "a"), str(made["lora"]))
    copy = tmp_path / str(shard).lstrip("/")
    assert copy.is_file() and shard.read_bytes() == before
    from safetensors import safe_open

    with safe_open(str(copy), "pt") as renamed:
        assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in renamed.keys()
    # Without the re-dispatch, peft moves each adapter layer to its base layer's device, meta: the weights are gone.
    model = _dispatched(made["llama"], tmp_path / "b")
    hidden = model.__dict__.pop("hf_device_map")
    with pytest.warns(UserWarning, match=meta_no_op):
        adapted = peft.PeftModel.from_pretrained(model, str(made["lora"]))
    model.hf_device_map = hidden
    assert all(p.device.type == "meta" for n, p in adapted.named_parameters() if "lora_" in n)


def test_attached_adapter_computes_what_peft_computes_in_memory(made: dict[str, Path], tmp_path: Path) -> None:
    """verify's attach: the dispatched base + adapter gives peft's in-memory logits; peft's merge_and_unload on it
    is exact too, but leaves every merged layer's weights in CPU memory (no longer offloaded)."""
    from accelerate.hooks import AlignDevicesHook
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapted = accelerated.attach_adapter(_dispatched(made["llama"], tmp_path / "c"), str(made["lora"]))
    in_memory = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(made["llama"]), str(made["lora"]))
    expected = _probe(in_memory)
    assert torch.allclose(_probe(adapted), expected, rtol=0, atol=1e-6)
    merged = adapted.merge_and_unload()
    assert torch.allclose(_probe(merged), expected, rtol=0, atol=1e-5)
    q_proj = merged.model.layers[1].self_attn.q_proj  # on "disk" before the merge
    assert isinstance(q_proj._hf_hook, AlignDevicesHook) and q_proj.weight.device.type == "meta"
    held = q_proj._hf_hook.weights_map
    assert isinstance(held, dict) and held["weight"].device.type == "cpu"  # a plain dict in memory, not the disk
