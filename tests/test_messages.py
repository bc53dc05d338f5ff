"""The generated message catalogue, its code table, and the knowledge explain decides causes with.

The catalogue is regenerated here for the installed peft (its source is the wheel's source) and
compared byte for byte with the committed entries for that release; the full run is
`python scripts/generate_messages.py --check`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftdoctor.messages import catalogue, codes, knowledge
from peftdoctor.messages.causes import diagnose
from peftdoctor.messages.templates import Hole, matcher, parse, render, templates_of
from peftdoctor.ops.explain import explain
from peftdoctor.peft import releases
from peftdoctor.rules.registry import RULES
from tests.in_release import installed_catalogued_peft

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import generate_messages  # noqa: E402


def _covers(ranges: list[str], version: str, order: list[str]) -> bool:
    for span in ranges:
        first, _, last = span.partition("..")
        if order.index(first) <= order.index(version) <= order.index(last or first):
            return True
    return False


def test_installed_peft_regenerates_byte_for_byte() -> None:
    folder, version, order = installed_catalogued_peft()
    sources = {f"peft/{p.relative_to(folder).as_posix()}": p.read_text("utf-8") for p in sorted(folder.rglob("*.py"))}
    last_file = {(t["kind"], t["template"]): t["file"] for t in generate_messages.extract("peft", sources)}
    fresh = [generate_messages.entry("peft", kind, template, file, ["*"])
             for (kind, template), file in last_file.items()]
    fresh_lines = sorted({json.dumps({k: v for k, v in e.items() if k != "releases"}, sort_keys=True)
                          for e in fresh if e is not None})
    committed = sorted(json.dumps({k: v for k, v in e.items() if k != "releases"}, sort_keys=True)
                       for e in catalogue.load()["entries"]
                       if e["package"] == "peft" and _covers(e["releases"], version, order))
    assert "\n".join(fresh_lines) == "\n".join(committed)


def test_catalogue_covers_every_release_and_is_stable() -> None:
    doc = catalogue.load()
    assert doc["releases"]["peft"] == [str(v) for v in releases.known_versions()]
    assert {"transformers", "safetensors", "bitsandbytes", "vllm", "sglang"} <= set(doc["releases"])
    assert generate_messages.render_catalogue(doc) == Path(catalogue.CATALOGUE).read_text("utf-8")
    ids = [e["id"] for e in doc["entries"]]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


def test_codes_table_is_applied_and_every_row_is_used() -> None:
    entries = catalogue.load()["entries"]
    for e in entries:
        assert (e["code"], e["area"]) == codes.verdict(e["package"], e["template"], e["file"], e["kind"]), e["id"]
        assert e["code"] is None or e["code"] in RULES
        assert e["code"] is not None or e["area"] is not None, f"{e['id']}: no verdict (codes.MAP or codes.AREAS)"
    for package, pattern, code in codes.MAP:
        assert any(e["package"] == package and re.search(pattern, e["template"]) for e in entries), (package, pattern)


def test_templates_from_source() -> None:
    source = '''
CONFIG = "adapter_config.json"
def f(x, r, limit):
    if x:
        raise ValueError(f"Can't find '{CONFIG}' at '{x}'")
    msg = "LoRA rank %d is greater than max_lora_rank %d." % (r, limit)
    logger.warning("Model {} does not support LoRA".format(x))
    assert r, f"{x.__name__} does not support LoRA yet."
    error_msg.append(f"vLLM does not support DoRA (use_dora={x}).")
    raise ValueError(msg)
'''
    import ast

    got = [t.text for t in templates_of(source, "m.py", {"CONFIG": "adapter_config.json"})]
    assert sorted(got) == sorted(["Can't find 'adapter_config.json' at '{x}'", "LoRA rank {r} is greater than "
                                  "max_lora_rank {limit}.", "Model {x} does not support LoRA",
                                  "{__name__} does not support LoRA yet.",
                                  "vLLM does not support DoRA (use_dora={x})."])
    assert ast  # the generator parses with ast, never imports the package


def test_matcher_round_trip_and_holes() -> None:
    parts = parse("Target modules {targets} not found in {{base}}")
    assert render(parts) == "Target modules {targets} not found in {{base}}"
    assert isinstance(parts[1], Hole)
    m = re.search(matcher(parts), "ValueError: Target modules ['x'] not found in {base}")
    assert m and m["targets"] == "['x']"


def test_matchers_are_linear() -> None:
    """The catalogue and the causes (the older pattern table of ops/explain.py has its own tests)."""
    hostile = ["a" * 200_000, "{" * 200_000, ("Cannot merge " * 20_000), ("size mismatch for x: " * 10_000),
               ("LoRA rank " * 20_000) + "\n", "'" * 200_000, (" is unsupported LoRA weight" * 7_000)]
    for text in hostile:
        start = time.process_time()  # CPU time of this process: load elsewhere does not count
        diagnose(text)
        assert time.process_time() - start < 1.0, text[:40]


def test_ten_megabyte_log_under_two_seconds() -> None:
    text = "INFO step 1 loss 0.5 lr 1e-4\n" * 350_000 + "ValueError: LoRA rank 64 is greater than max_lora_rank 16.\n"
    start = time.process_time()  # CPU time of this process: load elsewhere does not count
    found = [d.causes[0].code for d in diagnose(text)]
    assert time.process_time() - start < 2.0
    assert found == ["PD408"]


# --------------------------------------------------------------------------- knowledge


def test_key_story_from_the_schemas() -> None:
    legacy = knowledge.key_story("enable_lora")
    assert legacy.legacy and str(legacy.first) == "0.1.0"
    newer = knowledge.key_story("layer_replication", "LORA")
    assert newer.introduced_later and not newer.legacy
    assert knowledge.key_story("_name_or_path").model_config
    assert knowledge.key_story("architectures").model_config
    assert not knowledge.key_story("no_such_key_anywhere").known


@pytest.mark.parametrize("text, code, said", [
    ("TypeError: LoraConfig.__init__() got an unexpected keyword argument 'layer_replication'", "PD105", "introduced"),
    ("TypeError: __init__() got an unexpected keyword argument 'enable_lora'", "PD105", "legacy"),
    ("TypeError: PeftConfig.__init__() got an unexpected keyword argument 'architectures'", "PD359", "model config"),
    ("File \"peft/utils/config.py\", line 9\nTypeError: __init__() got an unexpected keyword argument "
     "'use_auth_token'", "PD105", "Hub download argument"),
])
def test_unknown_key_causes(text: str, code: str, said: str) -> None:
    found = explain(text)
    assert [e.finding.code for e in found] == [code]
    assert said in found[0].finding.message


def test_another_librarys_class_is_not_an_adapter_problem() -> None:
    assert explain("TypeError: SFTTrainer.__init__() got an unexpected keyword argument 'dataset_text_field'") == ()
    assert explain("cannot import name 'get_peft_config' from 'peft' (unknown location)") == ()


def test_size_mismatch_read_dimension_by_dimension() -> None:
    def line(param: str, saved: str, current: str) -> str:
        return (f"size mismatch for {param}: copying a param with shape torch.Size([{saved}]) from checkpoint, "
                f"the shape in current model is torch.Size([{current}]).")

    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert [e.finding.code for e in explain(line(f"{q}.lora_A.default.weight", "0", "8, 4096"))] == ["PD214"]
    assert [e.finding.code for e in explain(line(f"{q}.lora_A.weight", "16, 4096", "8, 4096"))] == ["PD206"]
    wrong = explain(line(f"{q}.lora_A.weight", "8, 5120", "8, 4096"))
    assert [e.finding.code for e in wrong] == ["PD361"] and wrong[0].alternatives == ()
    cut_line = line(f"{q}.lora_A.weight", "256, 4096", "8, 4096").split(", the shape")[0]
    cut = explain(cut_line + ", the shape in current mo")
    assert [e.finding.code for e in cut] == ["PD206"] and [a.code for a in cut[0].alternatives] == ["PD361"]
    vocab = explain(line("base_model.model.model.embed_tokens.weight", "32002, 4096", "32000, 4096"))
    assert [e.finding.code for e in vocab] == ["PD351"]


def test_engine_messages_use_the_engine_tables() -> None:
    found = explain("ValueError: LoRA rank 64 is greater than max_lora_rank 16.")
    assert [e.finding.code for e in found] == ["PD408"]
    assert "--max-lora-rank 64" in found[0].finding.fix and "vllm" in found[0].source
    dora = explain("ValueError: base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector is unsupported "
                   "LoRA weight")
    assert [e.finding.code for e in dora] == ["PD403"]


def test_a_missing_peft_method_says_which_release_has_it() -> None:
    old = explain("AttributeError: 'PeftModelForCausalLM' object has no attribute 'merge_and_unload'")
    assert [e.finding.code for e in old] == ["PD366"] and "peft>=0.3.0" in old[0].finding.fix
    assert [a.code for a in old[0].alternatives] == ["PD308"]
    prompt = explain("AttributeError: 'QWenLMHeadModel' object has no attribute 'merge_and_unload'")
    assert [e.finding.code for e in prompt] == ["PD308"]
    assert explain("AttributeError: 'NoneType' object has no attribute 'shape'") == ()


@pytest.mark.parametrize("text", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded",
    "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/config.json.",
    "KeyError: 'text'",
    "ValueError: Cannot use chat template functions because tokenizer.chat_template is not set",
    "RuntimeError: CUDA error: no kernel image is available for execution on the device",
    "NameError: name 'model' is not defined",
])
def test_not_adapter_problems_are_not_recognised(text: str) -> None:
    assert explain(text) == ()


# --------------------------------------------------------------------------- explain --adapter


def _cli(args: list[str], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftdoctor", "explain", "-", *args], input=text,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_explain_adapter_says_the_key_is_a_noop(tmp_path: Path) -> None:
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
              "layer_replication": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    text = "TypeError: LoraConfig.__init__() got an unexpected keyword argument 'layer_replication'"
    done = _cli(["--adapter", str(tmp_path)], text)
    assert done.returncode == 0, done.stderr
    assert "is a no-op" in done.stdout and f"peftdoctor fix {tmp_path}" in done.stdout
    config["layer_replication"] = [[0, 2], [1, 3]]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert "bears meaning" in _cli(["--adapter", str(tmp_path)], text).stdout


def test_explain_adapter_confirms_empty_weights(tmp_path: Path) -> None:
    from tests.adapters import write_safetensors_header

    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    write_safetensors_header(tmp_path / "adapter_model.safetensors",
                             {f"{q}.lora_A.weight": ("F32", [0]), f"{q}.lora_B.weight": ("F32", [0])})
    text = (f"size mismatch for {q}.lora_A.default.weight: copying a param with shape torch.Size([0]) from "
            "checkpoint, the shape in current model is torch.Size([8, 64]).")
    done = _cli(["--adapter", str(tmp_path), "--format", "json"], text)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)["explanations"][0]
    assert first["code"] == "PD214" and "confirms" in first["message"]


def test_explain_never_imports_the_heavy_stack() -> None:
    code = ("import io, sys, runpy; sys.argv=['peftdoctor','explain','-'];\n"
            "sys.stdin=io.TextIOWrapper(io.BytesIO(b'ValueError: LoRA rank 64 is greater than max_lora_rank 16.'))\n"
            "try: runpy.run_module('peftdoctor', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy=[m for m in ('torch','transformers','peft','numpy','safetensors') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "PD408" in result.stdout and "HEAVY []" in result.stderr, result.stderr
