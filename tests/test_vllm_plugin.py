"""The vLLM resolver plugin (peftdoctor/integrations/vllm.py) under vLLM's own code, taken from the released
wheels (scripts/engine_envs.py, cached in ~/.cache/peftdoctor): the entry point of the installed peftdoctor is
found and called by vLLM's `load_general_plugins`, vLLM's `LoRAResolverRegistry` hands the resolver back,
and its `resolve_lora` answers with vLLM's own `LoRARequest`. No GPU: see tests/vllm_driver.py for what of
vLLM runs (all of it from the wheel; before 0.9 vllm/__init__.py is skipped, it imports the whole engine).

Releases: 0.34.0 (newest), 0.8.5 (the first with vllm/lora/resolver.py), 0.8.4 (the last without).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
from adapters import make_dora_adapter, make_llama_base, make_lora_adapter, make_rslora_adapter

from peftdoctor.errors import UnusableInput, UsageError
from peftdoctor.integrations.vllm import lora_int_id, settings_from

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import peft_envs  # noqa: E402
import engine_envs  # noqa: E402

BASE = "peftdoctor-tests/tiny-llama"  # base_model_name_or_path of every adapter: no PD113 warning
NEWEST, FIRST, BEFORE = "0.34.0", "0.8.5", "0.8.4"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """adapters/{clean,rslora,dora,rank32,team/clean} and, beside adapters/, outside/x (a real adapter that a
    name must not reach)."""
    root = tmp_path_factory.mktemp("vllm-plugin")
    base = make_llama_base(root / "base")
    named = {"base_model_name_or_path": BASE}
    made = {
        "clean": make_lora_adapter(root / "adapters" / "clean", base, **named),
        "rslora": make_rslora_adapter(root / "adapters" / "rslora", base, r=4, lora_alpha=8, **named),
        "dora": make_dora_adapter(root / "adapters" / "dora", base, **named),
        "rank32": make_lora_adapter(root / "adapters" / "rank32", base, r=32, **named),
        "team/clean": make_lora_adapter(root / "adapters" / "team" / "clean", base, **named),
        "outside": make_lora_adapter(root / "outside" / "x", base, **named),
    }
    (root / "adapters" / "broken").mkdir()
    (root / "adapters" / "broken" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    return {"root": root, "dirs": root / "adapters", **made}


def drive(release: str, zoo: dict[str, Path], names: list[str], *, cache: Path, argv: tuple[str, ...] = (),
          judged: Optional[str] = None, fault: Optional[str] = None, **environ: str) -> dict[str, Any]:
    """tests/vllm_driver.py's answer under vllm `release`, the plugin configured by `environ`."""
    env = peft_envs.environ_for([engine_envs.ensure("vllm", release)])
    env.update({"PEFTDOCTOR_VLLM_ADAPTER_DIRS": str(zoo["dirs"]), "PEFTDOCTOR_SERVING_CACHE": str(cache),
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", **environ})
    job = {"init": "real" if release == NEWEST else "skip", "argv": list(argv), "base": BASE, "names": names,
           "release": judged, "fault": fault}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "vllm_driver.py"), json.dumps(job)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def said(result: dict[str, Any], level: str = "INFO") -> list[str]:
    """The plugin's log lines at `level` or above."""
    order = ["DEBUG", "INFO", "WARNING", "ERROR"]
    return [text for lvl, text in result["log"] if order.index(lvl) >= order.index(level)]


def test_the_entry_point_vllm_finds_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["vllm.general_plugins"]
    installed = {e.name: e.value for e in entry_points(group="vllm.general_plugins") if e.name == "peftdoctor"}
    assert installed == declared == {"peftdoctor": "peftdoctor.integrations.vllm:register"}, \
        "reinstall peftdoctor (pip install -e .) so its metadata has the entry point"


@pytest.mark.parametrize("release", [NEWEST, FIRST])
def test_resolver_under_vllms_own_loader_and_registry(release: str, zoo: dict[str, Path], tmp_path: Path) -> None:
    names = ["clean", "team/clean", "rslora", "dora", "rank32", "broken", "nobody", "../outside/x",
             "team/../../outside/x"]
    out = drive(release, zoo, names, cache=tmp_path / "cache")
    assert out["version"] == release
    assert "peftdoctor" in out["resolvers"] and out["is_lora_resolver"] is True
    assert [lvl for lvl, _ in out["register_log"]] == ["INFO"]
    assert out["register_log"][0][1] == f"peftdoctor: LoRA resolver registered for vllm {release} " \
                                        "(max-lora-rank the release's default)"
    results = out["results"]

    for name in ("clean", "team/clean"):  # (a) a clean adapter: vLLM's LoRARequest to the source directory
        request = results[name]["request"]
        assert request["type"] == "vllm.lora.request.LoRARequest"
        assert request["lora_name"] == name and request["lora_path"] == str(zoo[name])
        assert request["lora_int_id"] == lora_int_id(name, str(zoo[name])) > 0
        assert said(results[name]) == [f"peftdoctor: {name}: serving {zoo[name]} as is (nothing to fix for "
                                       f"vllm=={release})"]
    # rsLoRA: every release with the resolver API scales by lora_alpha/sqrt(r) itself (vllm.json
    # vllm-rslora-ok, >=0.7.0), so it is served as it is; the rewrite path is test_rewrite_... below.
    assert results["rslora"]["request"]["lora_path"] == str(zoo["rslora"])
    assert not (tmp_path / "cache").exists()  # nothing was copied for any of them

    # (c) refused: None, and one warning line naming the finding, its message and its fix.
    for name, code in (("dora", "PD403"), ("rank32", "PD408")):
        assert results[name]["request"] is None
        (line,) = said(results[name])
        assert line.startswith(f"peftdoctor: {name} refused: {code} vLLM {release}") and " — fix: " in line
        assert [lvl for lvl, _ in results[name]["log"]] == ["WARNING"]
    assert "--max-lora-rank 32" in said(results["rank32"])[0]
    (broken,) = said(results["broken"])  # bad input: one line, no traceback
    assert results["broken"]["request"] is None and broken.startswith("peftdoctor: broken refused: ")
    assert "adapter_config.json" in broken and "Traceback" not in broken
    # (d) a name no directory holds: None, and quiet (another resolver may know it).
    # (e) names that climb out of the adapter directory: never served, though outside/x is a real adapter.
    for name in ("nobody", "../outside/x", "team/../../outside/x"):
        assert results[name]["request"] is None and said(results[name]) == []


def test_the_servers_max_lora_rank_decides(zoo: dict[str, Path], tmp_path: Path) -> None:
    started = drive(NEWEST, zoo, ["rank32"], cache=tmp_path / "c1",
                    argv=("serve", BASE, "--enable-lora", "--max-lora-rank", "32"))
    assert started["results"]["rank32"]["request"]["lora_path"] == str(zoo["rank32"])
    assert "(max-lora-rank 32)" in started["register_log"][0][1]
    # The variable wins over the command line (a --config file vLLM read is out of the plugin's sight).
    told = drive(NEWEST, zoo, ["rank32"], cache=tmp_path / "c2", argv=("serve", BASE, "--max_lora_rank=64"),
                 PEFTDOCTOR_VLLM_MAX_LORA_RANK="16")
    assert told["results"]["rank32"]["request"] is None
    assert "PD408" in said(told["results"]["rank32"])[0]


def test_rewrite_is_served_as_the_exact_fixed_copy(zoo: dict[str, Path], tmp_path: Path) -> None:
    """(b) vLLM 0.6.5 refuses use_rslora (vllm-rslora-refused): the resolver, judging for that release, serves
    a cached copy whose config is byte for byte what `fix --target vllm==0.6.5 --out` writes. 0.6.5 predates
    the resolver API, so the resolver is vLLM 0.34.0's class with Settings.release set to 0.6.5."""
    out = drive(NEWEST, zoo, ["rslora"], cache=tmp_path / "cache", judged="0.6.5")
    request = out["results"]["rslora"]["request"]
    served = Path(request["lora_path"])
    assert served.parent == tmp_path / "cache" and served != zoo["rslora"]
    config = json.loads((served / "adapter_config.json").read_text())
    assert "use_rslora" not in config and config["lora_alpha"] == 8 * math.sqrt(4)
    assert json.loads((zoo["rslora"] / "adapter_config.json").read_text())["use_rslora"] is True  # untouched
    assert said(out["results"]["rslora"]) == [f"peftdoctor: rslora: serving fixed copy {served} for vllm==0.6.5 "
                                              "(lora_alpha 8 -> 16; dropped use_rslora)"]
    fixed = tmp_path / "fixed"
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "fix", str(zoo["rslora"]), "--target", "vllm==0.6.5",
                           "--out", str(fixed)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (served / "adapter_config.json").read_bytes() == (fixed / "adapter_config.json").read_bytes()
    weights = "adapter_model.safetensors"
    assert (served / weights).read_bytes() == (zoo["rslora"] / weights).read_bytes()


def test_an_error_of_peftdoctors_refuses_with_one_line(zoo: dict[str, Path], tmp_path: Path) -> None:
    """A bug in peftdoctor must not fail the client's request with vLLM's 500: one error line, and None."""
    out = drive(NEWEST, zoo, ["clean"], cache=tmp_path / "cache", fault="boom")
    assert out["results"]["clean"] == {"request": None,
                                       "log": [["ERROR", "peftdoctor: clean refused: RuntimeError: boom"]]}


def test_vllm_without_the_resolver_api_gets_one_line_and_nothing(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = drive(BEFORE, zoo, ["clean"], cache=tmp_path / "cache")
    assert out["version"] == BEFORE and "vllm.lora.resolver" in out["no_resolver_api"]
    assert out["register_log"] == [["WARNING", f"peftdoctor: vllm {BEFORE} has no LoRA resolver API "
                                                "(vllm>=0.8.5); nothing registered"]]


@pytest.mark.parametrize(("environ", "why"), [
    ({"PEFTDOCTOR_VLLM_MAX_LORA_RANK": "lots"}, "PEFTDOCTOR_VLLM_MAX_LORA_RANK 'lots' is not a positive whole number"),
    ({"PEFTDOCTOR_VLLM_ADAPTER_DIRS": ""}, "set PEFTDOCTOR_VLLM_ADAPTER_DIRS (or PEFTDOCTOR_VLLM_HUB=1)"),
    ({"PEFTDOCTOR_VLLM_ADAPTER_DIRS": "/no/such/dir"}, "PEFTDOCTOR_VLLM_ADAPTER_DIRS: /no/such/dir is not a directory"),
])
def test_a_bad_setting_registers_nothing_with_one_line(zoo: dict[str, Path], tmp_path: Path,
                                                        environ: dict[str, str], why: str) -> None:
    out = drive(NEWEST, zoo, [], cache=tmp_path / "cache", **environ)
    assert "peftdoctor" not in out["resolvers"]
    assert out["register_log"] == [["WARNING", f"peftdoctor: resolver not registered: {why}"]]


def test_settings_read_the_servers_command_line(tmp_path: Path) -> None:
    def rank(*argv: str, **environ: str) -> Optional[int]:
        return settings_from(environ, ["vllm", *argv], "0.34.0").max_lora_rank

    assert rank("serve", "m") is None
    assert rank("serve", "m", "--max-lora-rank", "64") == rank("serve", "m", "--max_lora_rank=64") == 64
    assert rank("serve", "m", "--max-lora-rank", "64", PEFTDOCTOR_VLLM_MAX_LORA_RANK="8") == 8
    for bad in ("0", "-8", "x"):
        with pytest.raises(UsageError, match="--max-lora-rank"):
            rank("serve", "m", "--max-lora-rank", bad)
    dirs = {"PEFTDOCTOR_VLLM_ADAPTER_DIRS": os.pathsep.join([str(tmp_path), str(ROOT), ""]), "PEFTDOCTOR_VLLM_HUB": "1"}
    got = settings_from(dirs, [], "0.9.0+cu128")
    assert got.directories == (tmp_path, ROOT) and got.hub and got.target == "vllm==0.9.0+cu128"
    with pytest.raises(UnusableInput, match="'nightly' is not a version"):
        settings_from(dirs, [], "nightly")


def test_lora_int_id_is_stable_across_processes() -> None:
    here = lora_int_id("a", "/x")
    code = "from peftdoctor.integrations.vllm import lora_int_id; print(lora_int_id('a', '/x'))"
    for seed in ("1", "2"):
        there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env={**peft_envs.environ_for([]), "PYTHONHASHSEED": seed}, check=True)
        assert int(there.stdout) == here
    assert 0 < here <= 2 ** 56 and lora_int_id("a", "/y") != here != lora_int_id("b", "/x")


def serve(zoo: dict[str, Path], names: list[str], plugins: str, cache: Path) -> dict[str, Any]:
    """tests/vllm_serving_driver.py's answer: vLLM 0.34.0's OpenAIServingModels.resolve_lora per name, with only
    the plugins named in VLLM_PLUGINS (vLLM's filesystem resolver reads the same adapter directory)."""
    env = peft_envs.environ_for([engine_envs.ensure("vllm", NEWEST), engine_envs.ensure_serving_deps()])
    env.update(VLLM_PLUGINS=plugins, VLLM_LORA_RESOLVER_CACHE_DIR=str(zoo["dirs"]),
               VLLM_ALLOW_RUNTIME_LORA_UPDATING="1", PEFTDOCTOR_VLLM_ADAPTER_DIRS=str(zoo["dirs"]),
               PEFTDOCTOR_SERVING_CACHE=str(cache))
    job = {"base": BASE, "names": names, "max_lora_rank": 16}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "vllm_serving_driver.py"), json.dumps(job)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vllms_api_server_path_end_to_end(zoo: dict[str, Path], tmp_path: Path) -> None:
    """What a client sees: without the plugin, vLLM's own filesystem resolver hands over the DoRA and the
    rank-32 adapters and vLLM's PEFTHelper refuses them: a bare 400. With it, they never reach add_lora:
    the server log names the finding, and the client gets vLLM's 404."""
    names = ["clean", "dora", "rank32", "nobody"]
    alone = serve(zoo, names, "lora_filesystem_resolver", tmp_path / "c1")
    assert alone["resolvers"] == ["FilesystemResolver"]
    assert alone["answers"]["clean"]["lora_path"] == str(zoo["clean"])
    for name in ("dora", "rank32"):
        assert alone["answers"][name]["code"] == 400
        assert alone["answers"][name]["message"] == f"LoRA adapter '{name}' was found but could not be loaded."
    assert alone["loaded"] == [str(zoo["clean"])]

    ours = serve(zoo, names, "peftdoctor", tmp_path / "c2")
    assert ours["resolvers"] == ["PeftdoctorResolver"]
    clean = ours["answers"]["clean"]
    assert clean["lora_path"] == str(zoo["clean"]) and clean["lora_int_id"] == 1  # vLLM's counter replaces ours
    for name, code in (("dora", "PD403"), ("rank32", "PD408")):
        assert ours["answers"][name]["code"] == 404
        (line,) = [text for level, text in ours["answers"][name]["log"] if level == "WARNING"]
        assert line.startswith(f"peftdoctor: {name} refused: {code} ")
    assert ours["answers"]["nobody"]["code"] == 404 and ours["loaded"] == [str(zoo["clean"])]

    # Both on one directory (docs/integrations/vllm.md warns): vLLM asks every resolver, so vLLM's own one
    # still hands over what peftdoctor refused, and the client gets the bare 400 again.
    both = serve(zoo, ["dora"], "peftdoctor,lora_filesystem_resolver", tmp_path / "c3")
    assert sorted(both["resolvers"]) == ["FilesystemResolver", "PeftdoctorResolver"]
    assert both["answers"]["dora"]["code"] == 400 and both["loaded"] == []


def test_hub_names_when_enabled(zoo: dict[str, Path], tmp_path: Path) -> None:
    """PEFTDOCTOR_VLLM_HUB=1: a name that is a repo id is downloaded (tests/hub_server.py, a local fake Hub that
    huggingface_hub's real snapshot_download talks to) and checked like a directory's."""
    from hub_server import serve_repos

    with serve_repos({"acme/clean": zoo["clean"], "acme/dora": zoo["dora"]}) as endpoint:
        out = drive(NEWEST, zoo, ["acme/clean", "acme/dora", "acme/missing"], cache=tmp_path / "cache",
                    PEFTDOCTOR_VLLM_ADAPTER_DIRS="", PEFTDOCTOR_VLLM_HUB="1", HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint,
                    HF_HUB_CACHE=str(tmp_path / "hub"), HF_TOKEN="")
    results = out["results"]
    served = Path(results["acme/clean"]["request"]["lora_path"])
    assert served.is_relative_to(tmp_path / "hub") and (served / "adapter_config.json").is_file()
    assert results["acme/dora"]["request"] is None and "PD403" in said(results["acme/dora"])[0]
    assert results["acme/missing"]["request"] is None and said(results["acme/missing"]) == []


def test_importing_the_plugin_imports_no_engine_and_no_torch() -> None:
    code = ("import sys, peftdoctor.integrations.vllm, peftdoctor.serving.prepare; "
            "print([m for m in ('vllm', 'torch', 'transformers', 'peft') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
