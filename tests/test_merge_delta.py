"""The torch-only LoRA merge (merge/delta.py) against peft's own layer code (merge/layer.py), bit for bit.

Every variant the torch path takes (plain, rsLoRA, rank/alpha patterns, nn.Linear output heads,
GPT-2's Conv1D with square and non-square weights, embeddings) in float32, bfloat16 and float16;
the variants it leaves to peft (DoRA, lora_bias, other initialisations) are refused by it. Also:
which path a whole merge takes, and the bf16/fp16 bound derived from the dtype.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests import adapters as A

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.merge import delta as D  # noqa: E402
from peftdoctor.merge import layer as L  # noqa: E402
from peftdoctor.merge import stream_merge  # noqa: E402
from peftdoctor.merge.buffers import BufferPool  # noqa: E402
from peftdoctor.merge.shortcut import CONV1D_MODEL_TYPES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16", "float16")


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("delta-bases")
    return {"llama": A.make_llama_base(root / "llama"), "gpt2": A.make_gpt2_base(root / "gpt2")}


# name -> (base family, adapter maker, LoraConfig options, the modules to compare)
VARIANTS: dict[str, tuple[str, Callable[..., Path], dict[str, Any], tuple[str, ...]]] = {
    "plain": ("llama", A.make_lora_adapter, {}, ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj")),
    "rslora": ("llama", A.make_rslora_adapter, {"r": 3, "lora_alpha": 7}, ("model.layers.0.self_attn.q_proj",)),
    "patterns": ("llama", A.make_pattern_lora_adapter,
                 {"rank_pattern": {"q_proj": 2, r"layers\.1\.self_attn\.v_proj": 5}, "alpha_pattern": {"q_proj": 3}},
                 ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                  "model.layers.1.self_attn.v_proj")),
    "rslora-patterns": ("llama", A.make_pattern_lora_adapter, {"use_rslora": True},
                        ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")),
    "all-linear": ("llama", A.make_lora_adapter, {"target_modules": "all-linear"},
                   ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj")),
    "lm-head": ("llama", A.make_lora_adapter, {"target_modules": ["lm_head", "gate_proj"]},
                ("lm_head", "model.layers.0.mlp.gate_proj")),
    "gpt2-conv1d": ("gpt2", A.make_lora_adapter, {"target_modules": ["c_attn", "c_proj", "c_fc"]},
                    ("transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.mlp.c_fc",
                     "transformer.h.1.mlp.c_proj")),
    "gpt2-conv1d-config-off": ("gpt2", A.make_lora_adapter, {"fan_in_fan_out": False},
                               ("transformer.h.0.attn.c_attn",)),
    "embedding": ("llama", A.make_lora_adapter, {"target_modules": ["embed_tokens"]}, ("model.embed_tokens",)),
    "gpt2-embedding": ("gpt2", A.make_lora_adapter, {"target_modules": ["wte", "wpe"]},
                       ("transformer.wte", "transformer.wpe")),
}


def _saved(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _base_weight(base: Path, module: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(base / "model.safetensors"), "pt") as fh:
        names = set(fh.keys())
        # gpt2 saves without the "transformer." prefix; a tied lm_head is saved as the input embedding
        for name in (f"{module}.weight", f"{module.split('.', 1)[-1]}.weight", "model.embed_tokens.weight"):
            if name in names:
                return fh.get_tensor(name)
    raise KeyError(module)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_torch_path_is_bit_identical_to_peft_layer_code(variant: str, dtype: str, bases: dict[str, Path],
                                                       tmp_path: Path) -> None:
    family, make, options, modules = VARIANTS[variant]
    adapter = make(tmp_path / "adapter", bases[family], **options)
    config = json.loads((adapter / "adapter_config.json").read_text())
    skeleton = L.load_skeleton(bases[family], config.get("task_type"), trust_remote_code=False)
    saved, peft_config = _saved(adapter), L.peft_config(adapter)
    for module in modules:
        weight = _base_weight(bases[family], module).to(getattr(torch, dtype))
        mine = D.module_tensors(saved, module)
        kind = D.layer_kind(skeleton.model, config, module, mine)
        ours = D.merged_weight(config, module, mine, weight, kind)
        pool = BufferPool(keep_bytes=1 << 30)  # the stream's path: the product in a reused buffer full of NaN
        pool.give(pool.take(4 * weight.numel()).fill_(255))
        assert torch.equal(D.merged_weight(config, module, mine, weight, kind, pool), ours) and pool.reused == 1
        prefix = f"base_model.model.{module}."
        theirs_in = {k: v for k, v in saved.items() if k.startswith(prefix)}
        whole = theirs_in.pop(f"{prefix}{D.WHOLE}", None)  # as the stream does: start from a weight saved whole
        start = weight.clone() if whole is None else whole.to(weight.dtype)
        theirs = L.merge_module(skeleton, peft_config, module, {"weight": start}, theirs_in, "cpu")["weight"]
        assert ours.dtype == theirs.dtype == weight.dtype
        assert torch.equal(ours, theirs), (module, kind, (ours - theirs).abs().max())
        assert not torch.equal(ours, weight)  # the adapter changed something
        assert torch.equal(weight, _base_weight(bases[family], module).to(weight.dtype))  # input left alone


def test_kinds_follow_the_layer_class(bases: dict[str, Path]) -> None:
    gpt2 = L.load_skeleton(bases["gpt2"], "CAUSAL_LM", trust_remote_code=False)
    llama = L.load_skeleton(bases["llama"], "CAUSAL_LM", trust_remote_code=False)
    assert D.layer_kind(gpt2.model, {"fan_in_fan_out": False}, "transformer.h.0.attn.c_proj", {}) == "conv1d"
    assert D.layer_kind(llama.model, {"fan_in_fan_out": True}, "model.layers.0.self_attn.q_proj", {}) == "linear"
    assert D.layer_kind(llama.model, {}, "model.embed_tokens", {}) == "embedding"
    assert D.layer_kind(llama.model, {}, "model.norm", {}) == "LlamaRMSNorm"
    assert D.layer_kind(None, {"fan_in_fan_out": True}, "x.c_attn", {}) == "conv1d"
    assert D.layer_kind(None, {}, "x.embed", {"lora_embedding_A": None}) == "embedding"
    assert D.layer_kind(None, {}, "x.q_proj", {}) == "linear"


def test_variants_that_need_peft_are_refused_by_the_torch_path() -> None:
    from peft import LoraConfig

    assert D.config_problem(LoraConfig().to_dict() | {"peft_type": "LORA"}) is None
    assert D.config_problem({"init_lora_weights": "Gaussian"}) is None
    for extra in ({"use_dora": True}, {"lora_bias": True}, {"init_lora_weights": "pissa"},
                  {"init_lora_weights": "olora"}, {"ensure_weight_tying": True}, {"use_qalora": True},
                  {"some_future_variant": {"on": 1}}):
        assert D.config_problem(extra) is not None, extra
    weight = torch.zeros(4, 3)
    pair = {"lora_A.weight": torch.ones(2, 3), "lora_B.weight": torch.ones(4, 2)}
    assert isinstance(D.plain({"r": 2}, "m", pair, weight, "linear"), D.PlainLora)
    assert "saved tensors" in D.plain({"r": 2}, "m", {**pair, "lora_magnitude_vector": torch.ones(4)}, weight, "linear")
    assert "shapes" in D.plain({"r": 3}, "m", pair, weight, "linear")
    assert "shapes" in D.plain({"r": 2}, "m", pair, weight, "conv1d")
    assert "layer type" in D.plain({"r": 2}, "m", pair, weight, "conv")
    with pytest.raises(ValueError, match="needs peft"):
        D.merged_weight({"r": 2, "use_dora": True}, "m", pair, weight)


def test_pattern_keys_match_peft() -> None:
    from peft.utils.other import get_pattern_key

    patterns = {"q_proj": 1, r"layers\.1\..*": 2, "layers.0.mlp.up_proj": 3, "proj": 4}
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.0.mlp.up_proj",
                 "model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate", "q_proj"):
        assert D.pattern_value(patterns, name, 9) == patterns.get(get_pattern_key(patterns.keys(), name), 9), name


PATHS = {  # case -> (base, maker, options, the heavy modules a merge imports)
    "lora": ("llama", A.make_lora_adapter, {}, []),  # the shortcut: no model class, torch only
    "all-linear": ("llama", A.make_lora_adapter, {"target_modules": "all-linear"}, []),
    "gpt2-conv1d": ("gpt2", A.make_lora_adapter, {}, ["transformers"]),  # the model class says Conv1D
    "embedding": ("llama", A.make_lora_adapter, {"target_modules": ["embed_tokens", "q_proj"]}, ["transformers"]),
    "dora": ("llama", A.make_dora_adapter, {}, ["peft", "transformers"]),  # peft's layer code
    "lora-bias": ("gpt2", A.make_lora_adapter, {"lora_bias": True}, ["peft", "transformers"]),
}


@pytest.mark.parametrize("case", sorted(PATHS))
def test_whole_merge_paths(case: str, bases: dict[str, Path], tmp_path: Path) -> None:
    """Which libraries a merge needs: plain LoRA merges with torch alone, peft only where its layer code must."""
    family, make, options, heavy = PATHS[case]
    adapter = make(tmp_path / "adapter", bases[family], **options)
    code = ("import sys\nfrom peftdoctor.merge import stream_merge\n"
            f"stream_merge({str(adapter)!r}, {str(bases[family])!r}, {str(tmp_path / 'out')!r})\n"
            "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(heavy)


def test_conv1d_model_types_cover_transformers() -> None:
    """Every transformers model whose modeling file uses Conv1D is listed, so the shortcut never
    takes a transposed weight for an nn.Linear's."""
    import transformers

    models = Path(transformers.__file__).parent / "models"
    found: set[str] = set()
    for modeling in models.glob("*/modeling_*.py"):
        if not re.search(r"\bConv1D\b", modeling.read_text(encoding="utf-8")):
            continue
        for configuration in modeling.parent.glob("configuration_*.py"):
            text = configuration.read_text(encoding="utf-8")
            found.update(re.findall(r'^    model_type = "([^"]+)"', text, re.MULTILINE))
    assert "gpt2" in found and found <= CONV1D_MODEL_TYPES, sorted(found - CONV1D_MODEL_TYPES)


def _exact(base: Path, adapter: Path, module: str) -> tuple[Any, Any, Any]:
    """(W, delta, |B| @ |A| * scaling) in float64 from the float32 inputs."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = D.module_tensors(_saved(adapter), module)
    _, _, scaling = D.rank_alpha_scaling(config, module)
    a, b = (tensors[k].double() for k in ("lora_A.weight", "lora_B.weight"))
    return _base_weight(base, module).double(), (b @ a) * scaling, (b.abs() @ a.abs()) * scaling


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_merge_error_is_bounded_by_the_dtype(dtype: str, bases: dict[str, Path], tmp_path: Path) -> None:
    """A --dtype bfloat16/float16 merge, as peft does it on CPU (docs/commands/merge.md): the base is rounded to the
    dtype, the delta computed in float32, their sum rounded once more. With u = eps/2 of each dtype:
    |merged - (W + delta)| <= u * (|W| + |W + delta|) * (1 + u) + (r + 2) * u_f32 * (|B||A| s + |W| + |delta|)
    elementwise, against float64 arithmetic on the float32 inputs; and it equals peft's bf16 merge."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"], r=8, lora_alpha=16,
                                  target_modules="all-linear")
    stream_merge(str(adapter), str(bases["llama"]), str(tmp_path / "out"), dtype=dtype)
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    half = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(bases["llama"]), dtype=half)
    theirs = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()
    u, u32 = torch.finfo(half).eps / 2, torch.finfo(torch.float32).eps / 2
    worst = 0.0
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.0.mlp.up_proj"):
        merged = ours[f"{module}.weight"]
        assert merged.dtype == half and torch.equal(merged, theirs[f"{module}.weight"])
        w, d, spread = _exact(bases["llama"], adapter, module)
        error = (merged.double() - (w + d)).abs()
        bound = u * (w.abs() + (w + d).abs()) * (1 + u) + (8 + 2) * u32 * (spread + w.abs() + d.abs())
        assert bool((error <= bound).all()), float((error - bound).max())
        worst = max(worst, float((error / bound).max()))
    assert worst > 0.25  # the bound is tight enough to mean something: rounding to the dtype shows


def test_pipeline_keeps_order_and_raises_the_workers_error() -> None:
    from peftdoctor.merge.pipeline import RunAhead
    from peftdoctor.merge.stream import OutTensor

    tensors = [OutTensor(f"t{i}", "F32", (1,), f"t{i}") for i in range(5)]
    seen: list[str] = []

    def produce(tensor: OutTensor) -> str:
        seen.append(tensor.name)
        if tensor.name == "t3":
            raise ValueError("broken t3")
        return tensor.name.upper()

    with RunAhead(produce, tensors, depth=2) as ahead:
        assert [ahead.get(t) for t in tensors[:3]] == ["T0", "T1", "T2"]
        with pytest.raises(ValueError, match="broken t3"):
            ahead.get(tensors[3])
    # One worker: the producer runs in the plan's order; t4, queued, may or may not have started.
    assert seen in (["t0", "t1", "t2", "t3"], ["t0", "t1", "t2", "t3", "t4"])
    with RunAhead(produce, tensors) as ahead, pytest.raises(RuntimeError, match="t1: asked out of order \\(expected t0\\)"):
        ahead.get(tensors[1])
    reads: list[tuple[str, str]] = []
    def read(key: tuple[str, str]) -> tuple[str, str]:
        reads.append(key)
        return key

    with RunAhead(read, [("a", "F32"), ("b", "F32")], depth=1, unplanned=read) as reader:
        assert reader.get(("a", "F32")) == ("a", "F32")
        assert reader.get(("c", "BF16")) == ("c", "BF16")  # out of plan: read directly
        assert reader.get(("b", "F32")) == ("b", "F32")
    assert sorted(reads) == [("a", "F32"), ("b", "F32"), ("c", "BF16")]


def test_buffer_pool_reuses_by_size_and_keeps_a_bounded_idle_set() -> None:
    pool = BufferPool(keep_bytes=64)
    first = pool.take(32)
    view = first.view(torch.float32).reshape(2, 4)
    assert pool.give(view) and pool.take(32).data_ptr() == first.data_ptr() and pool.reused == 1
    assert not pool.give(torch.zeros(8))  # memory the pool did not hand out is never taken
    assert pool.take(0).numel() == 0  # empty tensors are not pooled (they share one pointer)
    a, b, c = pool.take(32), pool.take(32), pool.take(16)
    assert pool.give(a) and pool.give(b) and pool.give(c)  # 80 idle bytes > 64: the oldest size (32) drops one
    assert pool.take(16).data_ptr() == c.data_ptr() and pool.take(32).data_ptr() == b.data_ptr()
    assert pool.take(32).data_ptr() not in (a.data_ptr(), b.data_ptr())  # a was dropped: a new buffer
    reused = pool.reused
    assert pool.give(pool.take(128))  # larger than keep_bytes: taken back but not kept
    pool.take(128)
    assert pool.reused == reused
    scratch = pool.scratch((3, 5), torch.bfloat16)
    assert scratch.shape == (3, 5) and scratch.dtype == torch.bfloat16 and pool.give(scratch)


def test_flusher_syncs_each_shard_and_raises_its_error(tmp_path: Path) -> None:
    from peftdoctor.merge.pipeline import Flusher

    (tmp_path / "a").write_bytes(b"x")
    with Flusher() as flusher:
        flusher.flush(tmp_path / "a")
        flusher.wait()
        flusher.flush(tmp_path / "missing")
        with pytest.raises(FileNotFoundError):
            flusher.wait()
