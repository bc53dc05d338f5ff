"""serving.prepare: what an engine plugin loads, on tiny real peft adapters.

- rsLoRA for vLLM 0.6.5 (its table: refuses use_rslora; fix folds it into lora_alpha): a cached fixed copy
  whose config has no use_rslora, and whose output under real peft equals the original's (logits compared
  on a tiny Llama base, with controls: the adapter moves the logits, and the naive edit that only drops
  use_rslora computes something else);
- a second prepare reuses the cache entry (same inodes: nothing copied); a lost race uses the winner's;
- DoRA for vLLM 0.6.5: refused, one line naming PD403; a clean adapter: the source itself, no cache entry;
- --max-lora-rank: the server's limit decides PD408; a limit vLLM cannot start with is refused.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from adapters import load_base, make_dora_adapter, make_llama_base, make_lora_adapter, make_rslora_adapter

from peftdoctor.serving import prepare as prepare_module
from peftdoctor.serving.prepare import Prepared, find_adapter, prepare

ROOT = Path(__file__).resolve().parent.parent
INPUT_IDS = [[1, 5, 9, 20, 33, 7, 42, 11], [1, 60, 2, 17, 17, 4, 88, 30]]
VLLM = "vllm==0.6.5"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    base = make_llama_base(root / "base")
    return {
        "base": base,
        "rslora": make_rslora_adapter(root / "rslora", base, r=4, lora_alpha=8),
        "dora": make_dora_adapter(root / "dora", base),
        "plain": make_lora_adapter(root / "plain", base),
        "rank32": make_lora_adapter(root / "rank32", base, r=32),
    }


def _logits(base: Path, adapter: Path) -> "list[list[list[float]]]":
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base), str(adapter)).eval()
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


def _config(path: Path) -> dict:
    return json.loads((path / "adapter_config.json").read_text())


def test_rslora_is_served_as_an_exact_fixed_copy(zoo: dict[str, Path], tmp_path: Path) -> None:
    import torch

    got = prepare(zoo["rslora"], VLLM, name="rs", cache_dir=tmp_path / "cache")
    assert isinstance(got, Prepared) and got.rewritten and not got.refused
    assert got.path is not None and got.path.parent == tmp_path / "cache"
    config = _config(got.path)
    assert "use_rslora" not in config and config["lora_alpha"] == 8 * math.sqrt(4)
    assert _config(zoo["rslora"])["use_rslora"] is True  # the source is untouched
    assert got.line == (f"peftdoctor: rs: serving fixed copy {got.path} for {VLLM} "
                        "(lora_alpha 8 -> 16; dropped use_rslora)")
    assert [f.code for f in got.findings if f.severity.value == "error"] == []

    original, fixed = _logits(zoo["base"], zoo["rslora"]), _logits(zoo["base"], got.path)
    assert torch.allclose(original, fixed, atol=1e-5, rtol=1e-4)
    # Controls: the adapter matters, and the naive edit (drop use_rslora, keep alpha) computes something else.
    assert (original - load_base(zoo["base"])(torch.tensor(INPUT_IDS)).logits).abs().max() > 1e-3
    naive = tmp_path / "naive"
    naive.mkdir()
    for name in os.listdir(zoo["rslora"]):
        (naive / name).write_bytes((zoo["rslora"] / name).read_bytes())
    (naive / "adapter_config.json").write_text(json.dumps({k: v for k, v in _config(zoo["rslora"]).items()
                                                          if k != "use_rslora"}))
    assert (original - _logits(zoo["base"], naive)).abs().max() > 1e-3


def test_second_prepare_reuses_the_entry(zoo: dict[str, Path], tmp_path: Path) -> None:
    first = prepare(zoo["rslora"], VLLM, cache_dir=tmp_path)
    assert first.path is not None and not first.reused
    # Hard links into the cache: the weights are not copied.
    weights = "adapter_model.safetensors"
    assert os.stat(first.path / weights).st_ino == os.stat(zoo["rslora"] / weights).st_ino
    before = {n: os.stat(first.path / n) for n in os.listdir(first.path)}
    second = prepare(zoo["rslora"], VLLM, cache_dir=tmp_path)
    assert (second.path, second.reused, second.rewritten) == (first.path, True, True)
    after = {n: os.stat(first.path / n) for n in os.listdir(first.path)}
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in after.items()} == \
        {n: (s.st_ino, s.st_mtime_ns) for n, s in before.items()}
    assert os.listdir(tmp_path) == [first.path.name]  # no second entry, no staging left behind
    # Another engine release is another entry.
    other = prepare(zoo["rslora"], "vllm==0.6.3", cache_dir=tmp_path)
    assert other.path is not None and other.path != first.path and not other.reused


_WINNER = """\
import sys
from pathlib import Path
from peftdoctor.serving.prepare import prepare
got = prepare(sys.argv[1], sys.argv[2], cache_dir=Path(sys.argv[3]))
print(got.path)
"""


def test_a_lost_race_uses_the_winners_entry(zoo: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process finishes the same entry while this one is checking its staged copy: this one's
    rename fails, its staging directory is removed, and it serves the other's complete entry."""
    from peftdoctor.ops import fix_copy as fix_copy_module

    real_check = fix_copy_module.check
    winners: list[str] = []

    def check_while_another_process_wins(*args: object, **kwargs: object) -> object:
        if not winners:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            done = subprocess.run([sys.executable, "-c", _WINNER, str(zoo["rslora"]), VLLM, str(tmp_path)],
                                  capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 0, done.stderr
            winners.append(done.stdout.strip())
        return real_check(*args, **kwargs)

    monkeypatch.setattr(fix_copy_module, "check", check_while_another_process_wins)
    got = prepare(zoo["rslora"], VLLM, cache_dir=tmp_path)
    assert winners and str(got.path) == winners[0] and got.reused
    assert os.listdir(tmp_path) == [Path(winners[0]).name]  # the loser's staging directory is gone
    assert "use_rslora" not in _config(got.path)


_RACER = """\
import sys, time
from pathlib import Path
from peftdoctor.serving.prepare import prepare
start = float(sys.argv[4])
time.sleep(max(0.0, start - time.time()))
print(prepare(sys.argv[1], sys.argv[2], cache_dir=Path(sys.argv[3])).path)
"""


def test_processes_preparing_at_once_share_one_complete_entry(zoo: dict[str, Path], tmp_path: Path) -> None:
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = str(time.time() + 4)  # after every interpreter has imported peftdoctor
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(zoo["rslora"]), VLLM, str(tmp_path), start],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    answers = [r.communicate(timeout=120) for r in racers]
    assert all(r.returncode == 0 for r in racers), answers
    paths = {out.strip() for out, _ in answers}
    assert len(paths) == 1 and os.listdir(tmp_path) == [Path(paths.pop()).name]
    entry = tmp_path / os.listdir(tmp_path)[0]
    assert sorted(os.listdir(entry)) == sorted(os.listdir(zoo["rslora"]))
    assert "use_rslora" not in _config(entry)


def test_an_unwritable_cache_is_a_refusal_line(zoo: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    got = prepare(zoo["rslora"], VLLM, name="rs", cache_dir=tmp_path / "file" / "cache")
    assert got.refused and "\n" not in got.line
    assert got.line == (f"peftdoctor: rs refused: cannot make the serving cache {tmp_path / 'file' / 'cache'} "
                        "(Not a directory); set PEFTDOCTOR_SERVING_CACHE to a writable directory")


def test_dora_is_refused_with_one_line_naming_pd403(zoo: dict[str, Path], tmp_path: Path) -> None:
    got = prepare(zoo["dora"], VLLM, name="my-dora", cache_dir=tmp_path)
    assert got.refused and got.path is None and not got.rewritten
    assert got.line.startswith("peftdoctor: my-dora refused: PD403 vLLM 0.6.5 refuses to load it")
    assert " — fix: " in got.line and "\n" not in got.line
    assert "PD403" in [f.code for f in got.findings]
    assert not tmp_path.exists() or os.listdir(tmp_path) == []


def test_clean_adapter_is_served_from_its_own_directory(zoo: dict[str, Path], tmp_path: Path) -> None:
    got = prepare(str(zoo["plain"]), VLLM, cache_dir=tmp_path / "cache")
    assert (got.path, got.rewritten, got.refused) == (zoo["plain"], False, False)
    # The tiny adapter names its base by a local path: a warning (PD113), said, not a reason to refuse.
    assert [f.code for f in got.findings] == ["PD113"]
    assert got.line == (f"peftdoctor: {zoo['plain']}: serving {zoo['plain']} as is (nothing to fix for {VLLM}; "
                        "1 warning, see `peftdoctor check`)")
    assert not (tmp_path / "cache").exists()


def test_max_lora_rank_is_the_servers_limit(zoo: dict[str, Path], tmp_path: Path) -> None:
    too_small = prepare(zoo["rank32"], VLLM, cache_dir=tmp_path, max_lora_rank=16)
    assert too_small.refused and "PD408" in too_small.line
    assert "rank 32 exceeds the server's --max-lora-rank 16" in too_small.line
    default = prepare(zoo["rank32"], VLLM, cache_dir=tmp_path)
    assert default.refused and "exceeds the default --max-lora-rank 16" in default.line
    enough = prepare(zoo["rank32"], VLLM, cache_dir=tmp_path, max_lora_rank=32)
    assert enough.path == zoo["rank32"] and not enough.rewritten
    # vLLM 0.6.5's LoRAConfig accepts only its listed ranks: no server runs with 30.
    impossible = prepare(zoo["rank32"], VLLM, cache_dir=tmp_path, max_lora_rank=30)
    assert impossible.refused and "--max-lora-rank 30: vLLM 0.6.5 does not start with it" in impossible.line
    # SGLang has no default limit (it sizes its pool from the adapters given at start-up): only a given one counts.
    sglang = prepare(zoo["rank32"], "sglang==0.5.23", cache_dir=tmp_path, max_lora_rank=16)
    assert sglang.refused and "PD408" in sglang.line and "rank 32 exceeds the server's --max-lora-rank 16" in sglang.line
    assert not prepare(zoo["rank32"], "sglang==0.5.23", cache_dir=tmp_path).refused


def test_unusable_sources_are_one_line_refusals(tmp_path: Path) -> None:
    missing = prepare(tmp_path / "nowhere", VLLM, name="ghost\x1b[2J\nPD000 forged")
    assert missing.refused and "\n" not in missing.line and "\x1b" not in missing.line
    assert missing.line.startswith("peftdoctor: ghost\\x1b[2J\\nPD000 forged refused: ")
    bad_target = prepare(tmp_path, "vllm==banana")
    assert bad_target.refused and "is not a version" in bad_target.line


def test_find_adapter_stays_inside_its_directories(zoo: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    (root / "team").mkdir(parents=True)
    os.symlink(zoo["plain"], root / "team" / "plain")  # a link inside the root to an adapter outside: refused
    os.symlink(zoo["plain"].parent, root / "up")
    (root / "team" / "real").mkdir()
    (root / "team" / "real" / "adapter_config.json").write_text("{}")
    assert find_adapter("team/real", directories=[tmp_path / "empty", root]) == str(root / "team" / "real")
    for name in ("team/plain", "up/plain", "../adapters/team/real", "/etc", "team/../team/real", "", "team//real",
                 "team\\real", "team/real\x00"):
        assert find_adapter(name, directories=[root]) is None, name
    assert find_adapter("owner/name", directories=[root]) is None  # no hub unless asked


def test_prepare_module_is_light() -> None:
    code = ("import sys, peftdoctor.serving.prepare\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'vllm', 'sglang') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.stdout.strip() == "[]", done.stderr
    assert prepare_module.__all__ == ["Prepared", "find_adapter", "prepare"]


_FIND_ON_HUB = """\
import json, sys
from peftdoctor.errors import UnusableInput
from peftdoctor.serving.prepare import find_adapter, prepare
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = find_adapter(name, hub=True)
    except UnusableInput as exc:
        found[name] = "UnusableInput: " + str(exc)
served = prepare(found[sys.argv[1]], "vllm==0.6.5", name=sys.argv[1]) if found[sys.argv[1]] else None
print(json.dumps({"found": found, "line": served and served.line}))
"""


def test_find_adapter_downloads_only_the_adapter_files_from_the_hub(tmp_path: Path) -> None:
    """huggingface_hub's real snapshot_download against the fake Hub of tests/hub_server.py: the adapter's
    files come, a checkpoint and an optimizer state do not; a missing repo is None."""
    from tests.hub_server import serve_repos
    from tests.test_hub_cache import FIXTURE

    served = tmp_path / "served"
    served.mkdir()
    for name in os.listdir(FIXTURE):
        (served / name).write_bytes((FIXTURE / name).read_bytes())
    (served / "tokenizer.json").write_text("{}")
    (served / "optimizer.pt").write_bytes(b"\0" * 64)
    (served / "checkpoint-5").mkdir()
    (served / "checkpoint-5" / "adapter_config.json").write_text("{}")
    cache, home = tmp_path / "hf-cache", tmp_path / "hf-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HF_") and "PROXY" not in k.upper()}
    names = ["team/lora", "team/missing"]
    with serve_repos({"team/lora": served}, lifetime=60) as endpoint:
        env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(home),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1")
        done = subprocess.run([sys.executable, "-c", _FIND_ON_HUB, *names], capture_output=True, text=True,
                              env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    snapshot = Path(answer["found"]["team/lora"])
    assert snapshot.parent.name == "snapshots" and str(snapshot).startswith(str(cache))
    assert sorted(os.listdir(snapshot)) == ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert answer["found"]["team/missing"] is None
    assert answer["line"] == f"peftdoctor: team/lora: serving {snapshot} as is (nothing to fix for vllm==0.6.5)"


def test_an_adapter_of_another_base_is_refused_for_the_served_model(zoo: dict[str, Path], tmp_path: Path) -> None:
    """The model the engine serves (vLLM hands its name to the resolver) is what the adapter is checked
    against when its config.json is at hand: a Llama adapter asked for on a GPT-2 server is refused, as real
    peft refuses it (vLLM 0.6.5 has no LoRA for GPT-2 at all, so its own PD416 is the line's finding); the
    right base, or one not at hand, changes nothing."""
    from adapters import make_gpt2_base
    from peft import PeftModel

    gpt2 = make_gpt2_base(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="not found in the base model"):
        PeftModel.from_pretrained(load_base(gpt2), str(zoo["plain"]))
    wrong = prepare(zoo["plain"], VLLM, cache_dir=tmp_path / "cache", base=str(gpt2))
    gpt2_named = "GPT2LMHeadModel (from the base config.json)"
    assert wrong.refused and "PD416" in wrong.line and gpt2_named in wrong.line, wrong.line
    assert {"PD220", "PD416"} <= {f.code for f in wrong.findings}, wrong.findings
    right = prepare(zoo["plain"], VLLM, cache_dir=tmp_path / "cache", base=str(zoo["base"]))
    assert right.path == zoo["plain"] and not right.refused, right.line
    unknown = prepare(zoo["plain"], VLLM, cache_dir=tmp_path / "cache", base="some-org/not-cached-here")
    assert unknown.path == zoo["plain"], unknown.line
    # a rewrite does not hide it: the rsLoRA adapter (folded for vLLM 0.6.5) is refused on GPT-2 too
    folded = prepare(zoo["rslora"], VLLM, cache_dir=tmp_path / "cache", base=str(gpt2))
    assert folded.refused and gpt2_named in folded.line and not (tmp_path / "cache").exists(), folded.line
