"""The SGLang plugin (peftdoctor/integrations/sglang.py) under SGLang's own code, taken from the released
wheels at test time (scripts/engine_envs.py; no GPU): SGLang's load_plugins() finds peftdoctor's entry point,
HookRegistry.apply_hooks() patches LoRAConfig.__init__, and loading adapters through SGLang's LoRAConfig
then serves the source, the exact fixed copy from the cache, or refuses with one line naming the finding."""
from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import peftdoctor
from peftdoctor.integrations import sglang as plugin

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"  # r=4, lora_alpha=8, q_proj/v_proj, nothing SGLang minds
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
import engine_envs  # noqa: E402

from tests.hub_server import serve_repos  # noqa: E402

HUB_REPO = "peftdoctor-tests/rslora-lora"


def _adapter(where: Path, **changes: Any) -> Path:
    shutil.copytree(CLEAN, where)
    config = json.loads((where / "adapter_config.json").read_text())
    (where / "adapter_config.json").write_text(json.dumps({**config, **changes}, indent=2))
    return where


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("adapters")
    return {"clean": _adapter(where / "clean"),
            # sglang-rslora-ignored: a rewrite exists (fold_rslora) for every release
            "rslora": _adapter(where / "rslora", use_rslora=True),
            # sglang-bias-ignored: SGLang drops the trained biases; no rewrite brings them back
            "refused": _adapter(where / "refused", bias="lora_only")}


@pytest.fixture(scope="module")
def entry_point_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site dir whose dist-info declares exactly the entry points pyproject.toml declares (an editable
    install made before they were added would lack them)."""
    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["sglang.srt.plugins"]
    site = tmp_path_factory.mktemp("site")
    info = site / f"peftdoctor-{peftdoctor.__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: peftdoctor\nVersion: {peftdoctor.__version__}\n")
    (info / "entry_points.txt").write_text("[sglang.srt.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return site


def _run_sglang(release: str, site: Path, cache: Path, adapters: dict[str, Path]) -> dict[str, Any]:
    """SGLang's loader in a fresh process, the adapters given by path and one by Hub repo id (served by
    tests/hub_server.py on loopback, as SGLang's --lora-paths name=OWNER/NAME would fetch it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SGLANG_PLUGINS") and not k.upper().startswith("HF_")
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(engine_envs.ensure("sglang", release)), str(ROOT)]),
               PEFTDOCTOR_SERVING_CACHE=str(cache), SGLANG_PLUGINS="peftdoctor", HF_HOME=str(cache / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost")
    sources = {**{k: str(v) for k, v in adapters.items()}, "hub": HUB_REPO}
    with serve_repos({HUB_REPO: adapters["rslora"]}) as endpoint:
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "sglang_host.py"), json.dumps(sources)],
                              capture_output=True, text=True, env=dict(env, HF_ENDPOINT=endpoint), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=engine_envs.RELEASES["sglang"])
def sglang_run(request: pytest.FixtureRequest, entry_point_site: Path, adapters: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict[str, Any]]:
    cache = tmp_path_factory.mktemp("serving-cache")
    return request.param, cache, _run_sglang(request.param, entry_point_site, cache, adapters)


def test_load_plugins_finds_the_entry_point_and_patches_lora_config(sglang_run) -> None:
    release, _, run = sglang_run
    assert run["sglang_file"].startswith(str(engine_envs.ensure("sglang", release)))  # SGLang's own loader ran
    assert run["hooks"] == [["BEFORE", "peftdoctor.integrations.sglang.check_before_load", "peftdoctor"]]
    assert run["patched"] == [plugin.TARGET]
    assert run["wraps_original"]


def test_the_extra_pins_the_first_release_with_the_plugin_framework() -> None:
    framework = "sglang/srt/plugins/hook_registry.py"
    assert (engine_envs.ensure("sglang", plugin.FIRST_RELEASE) / framework).is_file()
    before_first = engine_envs.wheel("sglang", engine_envs.READ_ONLY["sglang"][0])
    assert framework not in zipfile.ZipFile(before_first).namelist()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["sglang"] == [f"sglang>={plugin.FIRST_RELEASE}"]
    assert plugin.FIRST_RELEASE == engine_envs.RELEASES["sglang"][0]


def test_a_clean_adapter_loads_from_its_own_directory(sglang_run, adapters: dict[str, Path]) -> None:
    _, _, run = sglang_run
    for load in run["loads"]["clean"]:
        assert (load["path"], load["r"], load["lora_alpha"]) == (str(adapters["clean"]), 4, 8)


def test_an_adapter_with_a_rewrite_loads_from_the_fixed_copy(sglang_run, adapters: dict[str, Path]) -> None:
    _, cache, run = sglang_run
    first, second = run["loads"]["rslora"]
    assert Path(first["path"]).is_relative_to(cache) and Path(first["path"]) != adapters["rslora"]
    # SGLang scales by lora_alpha/r; the copy folds rsLoRA's sqrt(r) into lora_alpha, so SGLang's own
    # LoRAConfig now reads the alpha that makes lora_alpha/r equal peft's lora_alpha/sqrt(r)
    assert first["r"] == 4 and first["lora_alpha"] == pytest.approx(8 * math.sqrt(4))
    assert first["lora_alpha"] / first["r"] == pytest.approx(8 / math.sqrt(4))
    # the second load of the same adapter is served from the same cache entry, not a new copy
    assert (second["path"], second["inode"]) == (first["path"], first["inode"])
    assert json.loads((adapters["rslora"] / "adapter_config.json").read_text())["use_rslora"] is True  # untouched


def test_a_hub_repo_id_is_fetched_as_sglang_would_and_served_fixed(sglang_run) -> None:
    _, cache, run = sglang_run
    first, second = run["loads"]["hub"]
    assert Path(first["path"]).parent == cache and first["lora_alpha"] == pytest.approx(8 * math.sqrt(4))
    assert second["path"] == first["path"]


def test_an_adapter_sglang_cannot_serve_is_refused_in_one_line(sglang_run) -> None:
    release, _, run = sglang_run
    for load in run["loads"]["refused"]:
        assert load["error"] == "AdapterRefused" and "ValueError" in load["bases"]  # SGLang's loader catches it
        assert "\n" not in load["text"] and "PD407" in load["text"], load["text"]
        assert f"SGLang {release}" in load["text"]  # judged for the release that is running


def _methods(source: Path, cls: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(source.read_text())
    found = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {n.name: n for n in found.body if isinstance(n, ast.FunctionDef)}


def _calls(node: ast.AST) -> set[str]:
    """Names of what `node` calls: f(...) -> f, self.f(...) -> f."""
    return {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
            for c in ast.walk(node) if isinstance(c, ast.Call)}


def _refuses_softly(method: ast.FunctionDef) -> bool:
    """The method builds LoRAConfig(lora_ref.lora_path, ...) inside `try:` whose `except Exception` returns
    create_lora_update_result(success=False, ...): an exception there is a failed load, not a crash."""
    for node in ast.walk(method):
        if not isinstance(node, ast.Try):
            continue
        builds = any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "LoRAConfig" and c.args
                     and ast.unparse(c.args[0]) == "lora_ref.lora_path" for b in node.body for c in ast.walk(b))
        answers = any(getattr(h.type, "id", "") == "Exception" and "create_lora_update_result" in _calls(h)
                      and "success=False" in ast.unparse(h) for h in node.handlers)
        if builds and answers:
            return True
    return False


@pytest.mark.parametrize("release", engine_envs.RELEASES["sglang"])
def test_both_ways_in_reach_the_hooked_call_inside_the_loaders_try(release: str) -> None:
    """What the plugin's docstring says of SGLang, read from the release's own source."""
    lora = engine_envs.ensure("sglang", release) / "sglang" / "srt" / "lora"
    manager = _methods(lora / "lora_manager.py", "LoRAManager")
    guarded = {name for name, method in manager.items() if _refuses_softly(method)}
    assert guarded, f"sglang {release}: no LoRAConfig(lora_ref.lora_path) inside the loader's try"
    assert _calls(manager["init_lora_adapters"]) & guarded  # --lora-paths at start-up
    assert {"load_lora_adapter"} & guarded or _calls(manager["load_lora_adapter"]) & guarded  # /load_lora_adapter
    init = _methods(lora / "lora_config.py", "LoRAConfig")["__init__"]
    assert [a.arg for a in init.args.args[:2]] == ["self", "path"]  # the hook's args[1]
    weights = _methods(lora / "lora.py", "LoRAAdapter")["initialize_weights"]
    assert "self.config.path" in ast.unparse(weights)  # a replaced path reaches the weights too


def test_the_hook_replaces_the_path_wherever_sglang_passes_it(adapters: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTDOCTOR_SERVING_CACHE", str(tmp_path))
    monkeypatch.setattr(plugin, "running_target", lambda: "sglang==0.5.23")
    me = object()
    assert plugin.check_before_load(me, config_dict={"r": 4}) is None  # from_dict: tensors, no files
    assert plugin.check_before_load(me, str(adapters["clean"]), base_vocab_size=100) is None
    (args, kwargs) = plugin.check_before_load(me, path=str(adapters["rslora"]), base_vocab_size=100)
    assert args == (me,) and Path(kwargs["path"]).parent == tmp_path and kwargs["base_vocab_size"] == 100
    (args, kwargs) = plugin.check_before_load(me, str(adapters["rslora"]), None, None, 100)
    assert (args[0], args[2:], kwargs) == (me, (None, None, 100), {}) and Path(args[1]).parent == tmp_path


def test_the_max_lora_rank_is_read_where_each_release_publishes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def retired() -> None:
        raise RuntimeError("get_global_server_args() is retired")  # sglang>=0.5.20

    assert plugin.server_max_lora_rank() is None  # no SGLang process here: nothing published
    monkeypatch.setitem(sys.modules, "sglang.srt.server_args",
                        SimpleNamespace(get_global_server_args=lambda: SimpleNamespace(max_lora_rank=32)))
    assert plugin.server_max_lora_rank() == 32  # 0.5.11 to 0.5.18
    monkeypatch.setitem(sys.modules, "sglang.srt.server_args", SimpleNamespace(get_global_server_args=retired))
    monkeypatch.setitem(sys.modules, "sglang.srt.runtime_context",
                        SimpleNamespace(get_lora=lambda: SimpleNamespace(max_lora_rank=None),
                                        get_server_args=lambda: SimpleNamespace(max_lora_rank=64)))
    assert plugin.server_max_lora_rank() == 64


def test_importing_the_plugin_imports_no_engine() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, peftdoctor.integrations.sglang; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                           "('sglang', 'torch', 'transformers', 'peft')))"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def _doc_script(marker: str) -> str:
    """The ```sh block of docs/integrations/sglang.md whose text holds `marker`."""
    blocks = (ROOT / "docs" / "integrations" / "sglang.md").read_text().split("```")
    return next(b.removeprefix("sh\n") for b in blocks[1::2] if b.startswith("sh\n") and marker in b)


@pytest.mark.parametrize("name, starts", [("clean", True), ("refused", False)])
def test_the_tgi_entrypoint_starts_tgi_only_for_adapters_it_serves(tmp_path: Path, adapters: dict[str, Path],
                                                                   name: str, starts: bool) -> None:
    script = tmp_path / "entrypoint.sh"
    script.write_text(_doc_script("entrypoint.sh"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "text-generation-launcher"  # stands in for TGI: says it was started, and with what
    launcher.write_text('#!/bin/sh\necho "launched $*"\n')
    launcher.chmod(0o755)
    (tmp_path / "adapters").mkdir()
    shutil.copytree(adapters[name], tmp_path / "adapters" / name)
    env = dict(os.environ, ADAPTERS=str(tmp_path / "adapters"),
               PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    done = subprocess.run(["sh", str(script), "--port", "8080"], capture_output=True, text=True, env=env, timeout=120)
    assert (done.returncode == 0) is starts, done.stderr
    assert ("launched --port 8080" in done.stdout) is starts
    assert ("PD407" in done.stdout) is not starts, done.stdout
