"""`explain` recognises the text real code prints, for every entry of its PATTERNS table.

Nothing here is typed by hand: each error or warning is produced by running real peft / transformers /
safetensors / torch code on tiny local models and adapters (tests/adapters.py), and the traceback or
formatted warning is handed to `explain()` and to `python -m peftdoctor explain -`. Old-release texts
come from peft 0.13.2 in its side-by-side env (scripts/peft_envs.py), in one subprocess; Hub texts from
subprocesses with HF_HUB_OFFLINE=1 and an empty cache, or from the fake Hub on 127.0.0.1 (tests/hub_server.py).

Some tests hold real texts that an earlier pattern missed or misread (transformers 5 and safetensors
0.8 wordings, a vocabulary mismatch on an embedding adapter); they keep those cases fixed.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

from peftdoctor.ops.explain import PATTERNS, Explanation, explain
from peftdoctor.peft.releases import all_releases
from tests import adapters as A

ROOT = Path(__file__).resolve().parent.parent
ERA = Path(__file__).resolve().parent / "era"
sys.path.insert(0, str(ROOT / "scripts"))
import peft_envs  # noqa: E402

OLD = "0.13.2"  # raises TypeError for unknown keys, predates OFT's rewrite (0.14.0) and MISS
NEW_PEFT_TYPE = "MISS"  # a method the installed peft has and 0.13.2 does not

# Which test produces the real text for each code (kept in step with PATTERNS by the first test).
PRODUCED = {
    "PD105": "test_pd105_unknown_key_in_old_peft",
    "PD106": "test_pd106_unknown_key_warning",
    "PD350": "test_pd350_target_modules_not_found",
    "PD206": "test_pd206_rank_differs_from_weights",
    "PD351": "test_pd351_vocab_size_differs",
    "PD352": "test_pd352_model_class_on_adapter_repo",
    "PD353": "test_pd353_name_peft_never_had",
    "PD103": "test_pd103_peft_type_unknown_to_old_peft",
    "PD116": "test_pd116_invalid_task_type",
    "PD114": "test_pd114_oft_saved_before_0_14",
    "PD004": "test_pd004_no_adapter_config",
    "PD354": "test_pd354_merge_into_quantized_base",
    "PD204": "test_pd204_damaged_safetensors",
    "PD355": "test_pd355_missing_adapter_keys",
    "PD356": "test_pd356_nan_in_safe_merge",
    "PD203": "test_pd203_weights_only_refuses_object",
    "PD357": "test_pd357_custom_code_without_trust",
    "PD358": "test_pd358_repo_not_local_nor_cached",
    "PD501": "test_pd501_different_ranks",
    "PD502": "test_pd502_same_modules_to_save",
    "PD503": "test_pd503_list_and_regex_targets",
}


class NotATensor:
    """A plain object in a pickle: torch.load(weights_only=True) refuses it."""


# --------------------------------------------------------------------------- helpers


def traceback_of(call: Callable[[], Any]) -> str:
    """The traceback `call` raises, as Python prints it."""
    try:
        call()
    except Exception:
        return traceback.format_exc()
    raise AssertionError(f"{call} raised nothing")


def warnings_of(call: Callable[[], Any]) -> str:
    """Every warning `call` emits, as Python prints them on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)


def cli(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftdoctor", "explain", "-"], input=text, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def assert_explains(text: str, code: str) -> Explanation:
    """`explain(text)` finds `code`, and so does the CLI (exit 0, the code at the start of a line)."""
    found = {e.finding.code: e for e in explain(text)}
    assert code in found, f"{code} not recognised (found {sorted(found)}) in the real text:\n{text[-4000:]}"
    done = cli(text)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert re.search(rf"^{code} ", done.stdout, re.MULTILINE), done.stdout
    return found[code]


def codes(text: str) -> list[str]:
    return [e.finding.code for e in explain(text)]


def hub_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This environment minus any HF_*/proxy setting, with an empty Hub cache and home of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("HF_") and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    (tmp / "hf-home").mkdir(exist_ok=True)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HOME=str(tmp / "hf-home"), HF_HUB_CACHE=str(tmp / "hf-cache"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    env.update(extra)
    return env


def run_json(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explain")


@pytest.fixture(scope="module")
def base(work: Path) -> Path:
    return A.make_llama_base(work / "llama")


@pytest.fixture(scope="module")
def lora(work: Path, base: Path) -> Path:
    """A pristine LoRA (r=4, q_proj + v_proj); tests that damage one copy it first."""
    return A.make_lora_adapter(work / "lora", base)


def copy_of(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / adapter.name))


@pytest.fixture(scope="module")
def old_peft(work: Path) -> dict[str, Any]:
    """What peft 0.13.2 prints for configs saved by the installed peft, and an OFT config it saves."""
    from peft import LoraConfig, MissConfig

    saved = {"lora": work / "new-lora", "miss": work / "new-miss"}
    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]).save_pretrained(str(saved["lora"]))
    MissConfig(r=4, target_modules=["q_proj"]).save_pretrained(str(saved["miss"]))
    assert json.loads((saved["miss"] / "adapter_config.json").read_text())["peft_type"] == NEW_PEFT_TYPE
    oft = work / "oft-by-0.13.2"
    argv, env = peft_envs.env_python_cmd(OLD)
    job = {"save_oft": str(oft), "load": [str(d) for d in saved.values()]}
    out = run_json([*argv, str(ERA / "explain_tracebacks.py"), json.dumps(job)], env, work)
    return {"saved": saved, "oft": oft, **out}


_OFFLINE = """\
import json, sys, traceback
def tb(call):
    try:
        call()
    except Exception as exc:
        return traceback.format_exc(), f"{type(exc).__name__}: {exc}"
    raise SystemExit(f"{call} raised nothing")
from peft import PeftConfig
from transformers import AutoConfig, AutoModel
out = {}
out["PD004"] = tb(lambda: PeftConfig.from_pretrained(sys.argv[1]))
out["PD357"] = tb(lambda: AutoConfig.from_pretrained(sys.argv[2]))
out["PD358"] = tb(lambda: AutoModel.from_pretrained("someone/not-cached"))
# On a line of its own: the trust_remote_code prompt leaves stdout without a final newline.
print("\\n" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def offline(work: Path, base: Path) -> dict[str, tuple[str, str]]:
    """{code: (traceback, last line)} from the installed stack with HF_HUB_OFFLINE=1 and an empty cache."""
    empty = work / "empty"
    empty.mkdir()
    # A local model whose config.json names its own code (auto_map) under a model_type transformers lacks.
    custom = Path(shutil.copytree(base, work / "custom-code"))
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="tiny-custom", auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                                                      "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tiny-custom'\n")
    env = hub_env(work, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = run_json([sys.executable, "-c", _OFFLINE, str(empty), str(custom)], env, work)
    return {code: tuple(v) for code, v in out.items()}


# --------------------------------------------------------------------------- the table itself


def test_every_pattern_has_a_real_text() -> None:
    assert set(PRODUCED) == {p.code for p in PATTERNS}
    assert len(PATTERNS) == len({p.code for p in PATTERNS})
    missing = [name for name in PRODUCED.values() if not callable(globals().get(name))]
    assert missing == []


# --------------------------------------------------------------------------- config loading


def test_pd105_unknown_key_in_old_peft(old_peft: dict[str, Any]) -> None:
    lora = str(old_peft["saved"]["lora"])
    for how in ("peft_model", "peft_config"):
        text = old_peft[how][lora]
        assert text and "TypeError" in text, text
        found = assert_explains(text, "PD105")
        key = re.search(r"unexpected keyword argument '(\w+)'", text)[1]
        assert repr(key) in found.finding.message


def test_pd106_unknown_key_warning(lora: Path, tmp_path: Path) -> None:
    from peft import LoraConfig

    adapter = copy_of(lora, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(future_option=True, another_future_option=3)  # keys of a peft newer than the installed one
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    text = warnings_of(lambda: LoraConfig.from_pretrained(str(adapter)))
    assert "UserWarning" in text
    found = assert_explains(text, "PD106")
    assert "future_option" in found.finding.message and "another_future_option" in found.finding.message


def test_pd103_peft_type_unknown_to_old_peft(old_peft: dict[str, Any]) -> None:
    miss = str(old_peft["saved"]["miss"])
    first = next(r.name for r in all_releases() if NEW_PEFT_TYPE in r.peft_types)
    for how in ("peft_model", "peft_config"):
        text = old_peft[how][miss]
        assert text and f"KeyError: '{NEW_PEFT_TYPE}'" in text, text
        found = assert_explains(text, "PD103")
        assert NEW_PEFT_TYPE in found.finding.message
        assert f"peft>={first}" in found.finding.fix


def test_pd103_not_claimed_for_unrelated_key_error() -> None:
    text = traceback_of(lambda: {"bar": 1}["foo"])
    assert "KeyError: 'foo'" in text
    assert codes(text) == []
    done = cli(text)
    assert (done.returncode, done.stdout) == (1, "")


def test_pd116_invalid_task_type(lora: Path, base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel

    adapter = copy_of(lora, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["task_type"] = "CAUSAL"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    for call in (lambda: LoraConfig.from_pretrained(str(adapter)),
                 lambda: PeftModel.from_pretrained(A.load_base(base), str(adapter))):
        found = assert_explains(traceback_of(call), "PD116")
        assert "'CAUSAL'" in found.finding.message


def test_pd114_oft_saved_before_0_14(old_peft: dict[str, Any]) -> None:
    from peft import OFTConfig

    saved = json.loads((old_peft["oft"] / "adapter_config.json").read_text())
    assert saved["peft_type"] == "OFT" and "oft_block_size" not in saved
    assert_explains(traceback_of(lambda: OFTConfig.from_pretrained(str(old_peft["oft"]))), "PD114")


def test_pd004_no_adapter_config(offline: dict[str, tuple[str, str]], work: Path) -> None:
    text, last = offline["PD004"]
    found = assert_explains(text, "PD004")
    assert str(work / "empty") in found.finding.message
    assert_explains(last, "PD004")


def test_pd353_name_peft_never_had() -> None:
    fixes = {}
    for name in ("LoRAConfig", "AdapterConfig", "BitFitConfig"):
        text = traceback_of(lambda: exec(f"from peft import {name}", {}))
        assert "ImportError" in text
        fixes[name] = assert_explains(text, "PD353").finding.fix
    assert "LoraConfig" in fixes["LoRAConfig"]


# --------------------------------------------------------------------------- building and loading models


def test_pd350_target_modules_not_found(base: Path) -> None:
    from peft import LoraConfig, get_peft_model

    text = traceback_of(lambda: get_peft_model(A.load_base(base), LoraConfig(target_modules=["nope"])))
    found = assert_explains(text, "PD350")
    assert "nope" in found.finding.message


@pytest.mark.parametrize("fields", [{"target_modules": "q_proj["},
                                    {"target_modules": ["q_proj"], "rank_pattern": {"*q_proj": 2}}])
def test_pd118_regex_refused_by_re(base: Path, fields: dict[str, Any]) -> None:
    """peft's own traceback when a regex built from the config does not compile names no key: PD118 says
    which keys it comes from; re refusing a regex outside peft's matching is not an adapter problem."""
    from peft import LoraConfig, get_peft_model

    text = traceback_of(lambda: get_peft_model(A.load_base(base), LoraConfig(**fields)))
    found = assert_explains(text, "PD118")
    assert "at position" not in found.finding.message and ("unterminated" in found.finding.message
                                                          or "nothing to repeat" in found.finding.message)
    other = traceback_of(lambda: re.compile("[a-"))
    assert "PD118" not in {e.finding.code for e in explain(other)}


def test_pd206_rank_differs_from_weights(lora: Path, base: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    adapter = copy_of(lora, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 8  # the weights hold rank 4
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    text = traceback_of(lambda: PeftModel.from_pretrained(A.load_base(base), str(adapter)))
    found = assert_explains(text, "PD206")
    assert "lora_" in found.finding.message


@pytest.fixture(scope="module")
def vocab_mismatch(work: Path, base: Path) -> str:
    """An adapter that saved embeddings (LoRA on embed_tokens, a trained lm_head) loaded on a bigger vocab."""
    from peft import PeftModel

    adapter = A.make_lora_adapter(work / "lora-embeddings", base, target_modules=["q_proj", "embed_tokens"],
                                  modules_to_save=["lm_head"])
    bigger = A.make_llama_base(work / "llama-vocab-120", vocab_size=120)
    return traceback_of(lambda: PeftModel.from_pretrained(A.load_base(bigger), str(adapter)))


def test_pd351_vocab_size_differs(vocab_mismatch: str) -> None:
    found = assert_explains(vocab_mismatch, "PD351")
    assert "100" in found.finding.message and "120" in found.finding.message


def test_pd206_not_claimed_for_a_vocab_mismatch(vocab_mismatch: str) -> None:
    assert "PD206" not in codes(vocab_mismatch)


def test_pd355_missing_adapter_keys(base: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    adapter = A.make_lora_adapter(tmp_path / "lora", base)
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if "v_proj" not in k}, str(weights))
    text = warnings_of(lambda: PeftModel.from_pretrained(A.load_base(base), str(adapter)))
    found = assert_explains(text, "PD355")
    assert "v_proj" in found.matched


def test_pd352_model_class_on_adapter_repo(base: Path, lora: Path, work: Path) -> None:
    """A Hub repo with the base's config.json and adapter weights, loaded with a model class.

    With adapter_config.json in the repo, transformers' peft integration loads the base the adapter names
    instead, so there is no error; without it, transformers looks for full-model weights and says so.
    """
    from tests.hub_server import serve_repos

    repo = work / "served" / "adapter-with-config"
    repo.mkdir(parents=True)
    shutil.copy(base / "config.json", repo)
    shutil.copy(lora / "adapter_model.safetensors", repo)
    code = ("import traceback\nfrom transformers import AutoModelForCausalLM\ntry:\n"
            "    AutoModelForCausalLM.from_pretrained('someone/adapter-with-config')\n"
            "except Exception:\n    traceback.print_exc()\nelse:\n    raise SystemExit('loaded')\n")
    with serve_repos({"someone/adapter-with-config": repo}, lifetime=60) as endpoint:
        env = hub_env(work / "served", HF_ENDPOINT=endpoint, NO_PROXY="127.0.0.1,localhost",
                      no_proxy="127.0.0.1,localhost", DISABLE_SAFETENSORS_CONVERSION="1")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              cwd=work / "served", timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_explains(done.stderr, "PD352")


def test_pd352_local_adapter_dir_with_config(base: Path, lora: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    adapter = copy_of(lora, tmp_path)
    shutil.copy(base / "config.json", adapter)  # then transformers no longer switches to the base
    text = traceback_of(lambda: AutoModelForCausalLM.from_pretrained(str(adapter)))
    assert "Error no file named model.safetensors" in text
    assert "PD352" in codes(text)


def test_pd357_custom_code_without_trust(offline: dict[str, tuple[str, str]]) -> None:
    text, last = offline["PD357"]
    assert "custom code" in last, last
    assert_explains(text, "PD357")
    assert_explains(last, "PD357")


def test_pd358_repo_not_local_nor_cached(offline: dict[str, tuple[str, str]]) -> None:
    text, _ = offline["PD358"]
    assert_explains(text, "PD358")


def test_pd358_from_the_last_line_alone(offline: dict[str, tuple[str, str]]) -> None:
    _, last = offline["PD358"]
    assert "couldn't find them in the cached files" in last
    assert "PD358" in codes(last)


# --------------------------------------------------------------------------- weights files


def test_pd204_damaged_safetensors(lora: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    data = (lora / "adapter_model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])  # header intact, tensor data cut
    too_large = A.write_safetensors_header(tmp_path / "too-large.safetensors", {"w": ("F32", [4, 4])},
                                           lie_header_len=1 << 40)
    for call in (lambda: load_file(str(truncated)), lambda: safe_open(str(truncated), framework="pt")):
        assert "incomplete metadata" in assert_explains(traceback_of(call), "PD204").finding.message
    # An absurd header length is most often a text file (a Git LFS pointer, test_explain_wild.py): that
    # ranks first, the damaged file second.
    for call in (lambda: load_file(str(too_large)), lambda: safe_open(str(too_large), framework="pt")):
        found = assert_explains(traceback_of(call), "PD362")
        assert [a.code for a in found.alternatives] == ["PD204"] and "header too large" in found.alternatives[0].message


@pytest.mark.parametrize("keep", [20, 4], ids=["cut-in-header", "cut-in-length"])
def test_pd204_file_cut_inside_its_header(lora: Path, tmp_path: Path, keep: int) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "cut.safetensors"
    path.write_bytes((lora / "adapter_model.safetensors").read_bytes()[:keep])
    text = traceback_of(lambda: load_file(str(path)))
    assert "Error while deserializing header" in text
    assert "PD204" in codes(text)


def test_pd203_weights_only_refuses_object(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "extra": NotATensor()}, str(path))
    text = traceback_of(lambda: torch.load(str(path), weights_only=True))
    assert "NotATensor" in text
    assert_explains(text, "PD203")


def test_pd362_pointer_loaded_with_weights_only(tmp_path: Path) -> None:
    """torch >= 2.6 loads with weights_only: a Git LFS pointer is no longer "invalid load key, 'v'" but an
    unsupported opcode 118 ('v'), which read as PD203 (a pickle holding more than tensors)."""
    import torch

    path = tmp_path / "adapter_model.bin"
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    text = traceback_of(lambda: torch.load(str(path), weights_only=True))
    assert "Unsupported operand 118" in text
    assert codes(text) == ["PD362"]


# --------------------------------------------------------------------------- merging and combining


def test_pd356_nan_in_safe_merge(lora: Path, base: Path) -> None:
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(A.load_base(base), str(lora))
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight[0, 0] = float("nan")
    text = traceback_of(lambda: model.merge_and_unload(safe_merge=True))
    found = assert_explains(text, "PD356")
    assert "default" in found.finding.message


def _bnb_merge_warnings(base: Path, lora: Path) -> dict[str, str]:
    """The warnings of a real merge into a 4-bit and an 8-bit bitsandbytes base (on CPU)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    texts = {}
    for bits, option in (("4", "load_in_4bit"), ("8", "load_in_8bit")):
        quantized = AutoModelForCausalLM.from_pretrained(
            str(base), quantization_config=BitsAndBytesConfig(**{option: True}), device_map="cpu")
        model = PeftModel.from_pretrained(quantized, str(lora))
        texts[bits] = warnings_of(model.merge_and_unload)
    return texts


def _bnb_merge_messages_from_source() -> dict[str, str]:
    """The same messages, read from the installed peft's source (not typed here)."""
    try:
        import peft.tuners.lora.bnb as bnb_module

        source = inspect.getsource(bnb_module)
    except ImportError:  # the module imports bitsandbytes at the top: read the file instead
        spec = importlib.util.find_spec("peft.tuners.lora.bnb")
        assert spec is not None and spec.origin is not None
        source = Path(spec.origin).read_text()
    found = re.findall(r'"(Merge lora module to (\d+)-bit linear[^"]*)"', source)
    return {bits: f"UserWarning: {message}" for message, bits in found}


def test_pd354_merge_into_quantized_base(base: Path, lora: Path) -> None:
    try:
        import bitsandbytes  # noqa: F401

        texts = _bnb_merge_warnings(base, lora)
    except Exception:  # bitsandbytes absent or unable to quantize on this machine
        # Fallback: the literal warning from the installed peft's source (inspect.getsource of
        # peft.tuners.lora.bnb), never a hand-typed copy.
        texts = _bnb_merge_messages_from_source()
    assert set(texts) == {"4", "8"}, texts
    for bits, text in texts.items():
        found = assert_explains(text, "PD354")
        assert f"{bits}-bit" in found.finding.message


@pytest.fixture(scope="module")
def two_adapters(base: Path) -> Callable[..., Any]:
    from peft import LoraConfig, get_peft_model

    def build(first: dict[str, Any], second: dict[str, Any]) -> Any:
        model = get_peft_model(A.load_base(base), LoraConfig(**first), adapter_name="first")
        model.add_adapter("second", LoraConfig(**second))
        return model

    return build


def _combine(model: Any) -> str:
    return traceback_of(lambda: model.add_weighted_adapter(["first", "second"], [0.5, 0.5], "combined",
                                                           combination_type="linear"))


def test_pd501_different_ranks(two_adapters: Callable[..., Any]) -> None:
    model = two_adapters({"r": 4, "target_modules": ["q_proj"]}, {"r": 8, "target_modules": ["q_proj"]})
    assert_explains(_combine(model), "PD501")


def test_pd502_same_modules_to_save(two_adapters: Callable[..., Any]) -> None:
    both = {"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}
    assert_explains(_combine(two_adapters(both, dict(both))), "PD502")


def test_pd503_list_and_regex_targets(two_adapters: Callable[..., Any]) -> None:
    model = two_adapters({"r": 4, "target_modules": ["q_proj"]}, {"r": 4, "target_modules": r".*\.q_proj"})
    assert_explains(_combine(model), "PD503")


# --------------------------------------------------------------------------- whole texts


def test_multi_error_traceback_gives_every_code(lora: Path, tmp_path: Path) -> None:
    """One real chained traceback ("During handling of the above exception ...") holding three failures."""
    import torch
    from safetensors.torch import load_file

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((lora / "adapter_model.safetensors").read_bytes()[:-16])
    pickled = tmp_path / "pytorch_model.bin"
    torch.save({"extra": NotATensor()}, str(pickled))

    def load_weights() -> None:
        # torch.load raises its error `from None`, which hides whatever it was handling: it goes first.
        try:
            torch.load(str(pickled), weights_only=True)
        except Exception:
            try:
                load_file(str(cut))
            except Exception:
                exec("from peft import LoRAConfig", {})

    text = traceback_of(load_weights)
    assert text.count("During handling of the above exception") == 2
    found = codes(text)
    assert {"PD204", "PD203", "PD353"} <= set(found), found
    assert found == [p.code for p in PATTERNS if p.code in found]  # in table order, each once
    done = cli(text)
    assert done.returncode == 0
    assert re.findall(r"^(PD\d+) ", done.stdout, re.MULTILINE) == found


def test_unrelated_traceback_has_no_findings() -> None:
    def fails() -> None:
        try:
            {"bar": 1}["foo"]
        except KeyError:
            1 / 0

    text = traceback_of(fails)
    assert "ZeroDivisionError" in text
    assert explain(text) == ()
    done = cli(text)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no known" in done.stderr
