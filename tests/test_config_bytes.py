"""The bytes of an adapter's files as peft reads them: a config with a byte-order mark or in UTF-16/32, and
files that are Git LFS pointers (a clone made without git-lfs).

JSON itself (RFC 8259, and Python's json.loads on bytes) tolerates a BOM and UTF-16/32, so peftdoctor can
still judge such a config; but every peft release reads it with `json.load(open(path))`, text in UTF-8, and
fails. Each case is a real adapter written by peft 0.21.2 (fixtures/tiny-llama-lora) re-encoded, loaded by
real releases side by side; check's prediction for each release must be that release's own error.
"""
from __future__ import annotations

import ast
import codecs
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from peftdoctor import check
from peftdoctor.peft import releases
from tests.in_release import outcomes, version_of

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "tiny-llama-lora"
LOADERS = ["0.3.0", "0.6.2", "0.13.2", "installed"]
POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")
TEXT = (FIXTURE / "adapter_config.json").read_text()
ENCODED = {  # name: the config's bytes
    "utf-8-bom": codecs.BOM_UTF8 + TEXT.encode("utf-8"),  # what Windows PowerShell 5's Set-Content -Encoding UTF8 writes
    "utf-16-bom": TEXT.encode("utf-16"),  # PowerShell 5's `>` and Out-File
    "utf-16-le": TEXT.encode("utf-16-le"),
    "utf-32-bom": TEXT.encode("utf-32"),
}


def copy_with(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    target = Path(shutil.copytree(FIXTURE, tmp / name))
    for file, data in files.items():
        (target / file).write_bytes(data)
    return target


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("encoded")
    made = {name: copy_with(tmp, name, {"adapter_config.json": data}) for name, data in ENCODED.items()}
    made["lfs-pointer"] = copy_with(tmp, "lfs-pointer", {"adapter_config.json": POINTER})
    made["plain"] = copy_with(tmp, "plain", {})
    return made


@pytest.fixture(scope="module")
def real_outcomes(encoded: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return outcomes(LOADERS, "load_config.py", encoded.values())


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", list(ENCODED))
def test_encoded_config_fails_as_each_release_fails(encoded: dict[str, Path], real_outcomes: dict[str, Any],
                                                    name: str, loader: str) -> None:
    real = real_outcomes[loader][str(encoded[name])]
    assert real["result"] == "fails", real  # what the release itself does with the file
    report = check(str(encoded[name]), peft=version_of(loader))
    predicted = {c.peft: c for c in report.compatibility}[version_of(loader)]
    assert (predicted.result, predicted.error) == ("fails", real["error"])
    found = [f for f in report.findings if f.code == "PD119"]
    assert len(found) == 1 and real["error"] in found[0].message, report.findings


def test_the_same_config_in_plain_utf8_loads(encoded: dict[str, Path], real_outcomes: dict[str, Any]) -> None:
    """The control: only the encoding differs, and the plain file loads in the newest loader."""
    assert real_outcomes["installed"][str(encoded["plain"])]["result"] == "ok"
    report = check(str(encoded["plain"]), peft="0.21.2")
    assert report.compatibility[-1].result == "ok" and not [f for f in report.findings if f.code == "PD119"]


def test_encoded_config_is_still_judged(encoded: dict[str, Path]) -> None:
    """peftdoctor reads the JSON the way RFC 8259 allows, so the config's other findings are still reported."""
    report = check(str(encoded["utf-16-bom"]), peft="0.13.2")
    assert {f.code for f in report.findings} >= {"PD119", "PD105"}, report.findings


@pytest.mark.parametrize("version", [str(v) for v in releases.known_versions()])
def test_every_release_reads_the_config_as_utf8_text(version: str) -> None:
    """Why the prediction holds for every release, not only the ones with an env: each release's own
    from_json_file (read from its wheel) is `with open(path[, "r"]) as file: json.load(file)`, no encoding
    named, so Python opens it in the locale's encoding, UTF-8 on Linux and macOS."""
    from tests.era.released_source import wheel

    with zipfile.ZipFile(wheel(version)) as archive:
        sources = [archive.read(n).decode() for n in archive.namelist() if n.endswith("config.py")]
    readers = [node for text in sources for node in ast.walk(ast.parse(text))
               if isinstance(node, ast.FunctionDef) and node.name == "from_json_file"]
    assert readers, version
    for reader in readers:
        calls = [n for n in ast.walk(reader) if isinstance(n, ast.Call)]
        opens = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "open"]
        assert len(opens) == 1 and not opens[0].keywords, ast.dump(reader)[:300]
        assert [ast.literal_eval(a) for a in opens[0].args[1:]] in ([], ["r"])
        assert any(isinstance(c.func, ast.Attribute) and c.func.attr == "load" for c in calls)


def test_fix_rewrites_an_encoded_config_as_utf8(encoded: dict[str, Path], tmp_path: Path) -> None:
    """A rewrite writes UTF-8 without a mark, so fix does not call the mark 'still broken' after it; with
    nothing to rewrite, nothing is written and the mark is still reported."""
    from peftdoctor.ops.fix import apply, plan

    target = Path(shutil.copytree(encoded["utf-16-bom"], tmp_path / "a"))
    rewrite = plan(str(target), peft="0.13.2")
    assert rewrite.changed and "PD119" not in {f.code for f in rewrite.remaining}, rewrite.remaining
    apply(rewrite, backup_suffix=None)
    assert (target / "adapter_config.json").read_bytes().startswith(b"{")
    assert not [f for f in check(str(target), peft="0.13.2").findings if f.code == "PD119"]
    untouched = plan(str(encoded["utf-8-bom"]), peft="0.21.2")
    assert not untouched.changed and "PD119" in {f.code for f in untouched.remaining}


# ------------------------------------------------------------------ Git LFS pointers


def test_pointer_config_is_named_once(encoded: dict[str, Path], real_outcomes: dict[str, Any]) -> None:
    for loader in LOADERS:  # every release fails on it as on any text that is not JSON
        real = real_outcomes[loader][str(encoded["lfs-pointer"])]
        assert real["error"] == "JSONDecodeError: Expecting value: line 1 column 1 (char 0)", (loader, real)
    findings = check(str(encoded["lfs-pointer"]), peft="0.21.2").findings
    assert [(f.code, f.file) for f in findings] == [("PD362", "adapter_config.json")], findings
    assert "Git LFS pointer" in findings[0].message and "git lfs pull" in findings[0].fix


@pytest.fixture(scope="module")
def pointer_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pointers")
    safetensors = copy_with(tmp, "safetensors", {"adapter_model.safetensors": POINTER})
    pickle = copy_with(tmp, "pickle", {"adapter_model.bin": POINTER})
    (pickle / "adapter_model.safetensors").unlink()
    return {"adapter_model.safetensors": safetensors, "adapter_model.bin": pickle}


@pytest.mark.parametrize("file", ["adapter_model.safetensors", "adapter_model.bin"])
def test_pointer_weights_get_one_finding_with_one_fix(pointer_weights: dict[str, Path], file: str) -> None:
    findings = [f for f in check(str(pointer_weights[file]), peft="0.21.2").findings if f.file == file]
    assert [f.code for f in findings] == ["PD362"], findings
    assert "git lfs pull" in findings[0].fix and "git lfs pull" not in findings[0].message
    assert "re-save" not in findings[0].fix


def test_real_peft_cannot_load_pointer_weights(pointer_weights: dict[str, Path]) -> None:
    """What the finding stands for: peft's own weight reader refuses both pointers."""
    import subprocess
    import sys

    script = ("import sys\nfrom peft.utils import load_peft_weights\n"
              "try:\n    load_peft_weights(sys.argv[1], device='cpu')\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    errors = {file: subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                                   timeout=120).stdout.strip() for file, path in pointer_weights.items()}
    assert errors["adapter_model.safetensors"].startswith("SafetensorError"), errors
    # torch.load with weights_only (the default since torch 2.6) stops at the pointer's first byte, "v" (118)
    assert errors["adapter_model.bin"].startswith("UnpicklingError") and "Unsupported operand 118" in \
        errors["adapter_model.bin"], errors
