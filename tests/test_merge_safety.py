"""merge and verify against hostile or unlucky surroundings (issue 20, the second outside test pass):
a base that ships its own code, links planted while a merge runs, the --out destinations both commands
accept, a write that fails, and Ctrl-C while torch loads."""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.merge import stream_merge  # noqa: E402
from peftdoctor.verification import render_text, verify  # noqa: E402
from tests import adapters as A  # noqa: E402

@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    llama = A.make_llama_base(root / "llama")
    return {"root": root, "llama": llama, "adapter": A.make_lora_adapter(root / "adapter", llama)}


def _remote_code_base(llama: Path, directory: Path) -> Path:
    """The llama base under a model type transformers does not know, with its own code (auto_map) that
    leaves a marker file wherever it runs."""
    remote = Path(shutil.copytree(llama, directory))
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="pdremote", auto_map={"AutoConfig": "configuration_pd.PdConfig",
                                                   "AutoModelForCausalLM": "modeling_pd.PdModel"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "configuration_pd.py").write_text(
        "import os\nopen(os.environ['PD_MARKER'], 'w').write('ran')\nfrom transformers import LlamaConfig\n\n\n"
        "class PdConfig(LlamaConfig):\n    model_type = 'pdremote'\n")
    (remote / "modeling_pd.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_pd import PdConfig\n\n\n"
        "class PdModel(LlamaForCausalLM):\n    config_class = PdConfig\n")
    return remote


def test_remote_code_never_runs_nor_asks_without_the_flag(made: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Left unset, transformers asks "Do you wish to run the custom code? [y/N]" on stdin for a model type it
    does not know: `echo y |` ran the base's code, an open stdin stalled 15 s. Now merge, verify --merged and
    verify layer by layer tell it no: stdin is never read, the code never runs, and the note says why."""
    import transformers.dynamic_module_utils as dynamic

    remote = _remote_code_base(made["llama"], tmp_path / "remote")
    monkeypatch.setenv("PD_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # should it run anyway
    stdin = io.StringIO("y\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    report = stream_merge(str(made["adapter"]), str(remote), str(tmp_path / "out"))
    assert stdin.tell() == 0 and not (tmp_path / "marker").exists()
    assert any("ships its own model code, which runs only with --trust-remote-code" in n for n in report.notes)
    judged = verify(str(made["adapter"]), base=str(remote), merged=str(tmp_path / "out"))
    assert judged.verdict == "verified", render_text(judged)
    monkeypatch.setenv("PEFTDOCTOR_MEMORY_BUDGET", "10000")
    assert verify(str(made["adapter"]), base=str(remote)).verdict == "verified"
    assert stdin.tell() == 0 and not (tmp_path / "marker").exists()


def test_remote_code_runs_with_the_flag(made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--trust-remote-code on merge hands the choice to transformers: the base's code builds its structure."""
    import transformers.dynamic_module_utils as dynamic

    from peftdoctor.merge.command import merge_command

    remote = _remote_code_base(made["llama"], tmp_path / "remote")
    monkeypatch.setenv("PD_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # transformers appends the modules folder to it
    assert merge_command(str(made["adapter"]), str(remote), str(tmp_path / "out"), trust_remote_code=True) == 0
    assert (tmp_path / "marker").read_text() == "ran"
