"""Exit codes and messages, as the outside test pass of issue 20 found them: each case is its reproduction
(a hostile value, an unsearchable directory, a path over PATH_MAX, a bad --backup-suffix, a closed pipe, a
full disk, an immutable file) and the one line and exit code wanted instead of raw terminal control
sequences, "internal error", "Broken pipe" or a stray file."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from peftdoctor import errors
from peftdoctor.cli.app import app, run
from peftdoctor.render import render

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BROKEN = ROOT / "fixtures" / "broken-adapter"
CONFIG = "adapter_config.json"
RUNNER = CliRunner()

# What a value may hold to take over a terminal: OSC set-title ended by BEL, clear screen, a carriage
# return and newline that start a forged finding line, DEL, C1 NEL and CSI, RLO, the bidi isolates, the
# Unicode line and paragraph separators, an invisible left-to-right mark.
HOSTILE = ("\x1b]0;pwned\x07\x1b[2J\r\n  PD000 error: forged\x7f\x85\x9b\u202egnp.exe\u2066\u2067\u2068\u2069"
           "\u2028\u2029\u200e")
INLINE = HOSTILE.replace("\r\n", "")  # for a file name, and a log's line (its line ends are the log's own)
CONTROLS = {"\x1b", "\x07", "\r", "\x7f", "\x85", "\x9b", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
            "\u2028", "\u2029", "\u200e"}


def cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, encoding="utf-8", errors="surrogateescape", check=False, **kwargs)


def raw_controls(text: str) -> set[str]:
    """The terminal-moving characters in `text` (its own line ends aside)."""
    return {ch for ch in text if ch in CONTROLS or (ord(ch) < 0x20 and ch != "\n")}


def hostile_adapter(parent: Path) -> Path:
    """The clean fixture under a directory name, config keys, a target module, a base id and tensor names
    that hold HOSTILE."""
    directory = parent / f"adapter{INLINE}"
    shutil.copytree(CLEAN, directory)
    config = json.loads((CLEAN / CONFIG).read_text())
    config[f"evil{HOSTILE}"] = True
    config["target_modules"] = ["q_proj", f"v_proj{HOSTILE}"]
    config["base_model_name_or_path"] = f"org/{HOSTILE}"
    (directory / CONFIG).write_text(json.dumps(config))
    # The header is JSON: a tensor name may hold anything. Layer 1's q_proj gets a hostile module name.
    weights = (CLEAN / "adapter_model.safetensors").read_bytes()
    size = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + size])
    header = {name.replace("layers.1.self_attn.q_proj", f"layers.1.self_attn.q{HOSTILE}"): entry
              for name, entry in header.items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (directory / "adapter_model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + weights[8 + size:])
    return directory


# --------------------------------------------------------------------------- control characters


def test_line_escapes_every_terminal_control_and_nothing_else() -> None:
    from peftdoctor.render.terminal import line

    for ch in CONTROLS | {"\x00", "\n", "\t", "\x1a", "\x80", "\x9f", "\u061c", "\u200f", "\u202a", "\ufeff",
                          "\udc80", "\U000e0001"}:
        shown = line(f"a{ch}b")
        assert shown.startswith("a\\") and shown.endswith("b") and shown.isprintable(), (ch, shown)
    assert line("a\x1bb\u202ec\nd") == "a\\x1bb\\u202ec\\nd"
    for text in ("plain", "modèle 日本語 🙂 a\xa0b", "C:\\path\\with\\backslashes", ""):
        assert line(text) == text


def test_hostile_values_are_escaped_in_every_text_output(tmp_path: Path) -> None:
    """Was: keys, target modules, a base id and a directory name from the adapter went raw to the terminal
    (the window title set, the screen cleared, a forged `PD000 error` line, text reversed by RLO)."""
    directory = hostile_adapter(tmp_path)
    log = tmp_path / "log.txt"
    log.write_text(f"ValueError: Target modules {{'q_proj{INLINE}'}} not found in the base model. Please check "
                   "the target modules and try again.\n", encoding="utf-8")
    runs = {
        "check": cli("check", str(directory), "--peft", "0.13.2"),
        "check two": cli("check", str(directory), str(CLEAN), "--peft", "0.13.2", "--combine", "linear"),
        "fix": cli("fix", str(directory), "--peft", "0.13.2", "--dry-run"),
        "scan": cli("scan", str(tmp_path), "--peft", "0.13.2"),
        "explain": cli("explain", str(log)),
        "missing": cli("check", str(tmp_path / f"gone{HOSTILE}")),
    }
    for name, done in runs.items():
        assert not raw_controls(done.stdout + done.stderr), (name, done.stdout, done.stderr)
        assert "internal error" not in done.stderr, (name, done.stderr)
        # The forged line stays inside the line of the value that carried it.
        assert not any(row.lstrip().startswith("PD000") for row in (done.stdout + done.stderr).splitlines()), name
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\n  PD000 error: forged" in runs["check"].stdout
    assert "\\u202egnp.exe\\u2066" in runs["check"].stdout and "REFUSE  evil\\x1b]0;pwned" in runs["fix"].stdout
    assert "layers.1.self_attn.q\\x1b]0;pwned\\x07" in runs["check"].stdout  # a tensor's module name
    assert "q_proj\\x1b]0;pwned\\x07" in runs["explain"].stdout
    assert runs["missing"].returncode == 2 and runs["missing"].stderr.count("\n") == 1


def test_json_and_sarif_keep_the_values_exact(tmp_path: Path) -> None:
    """Machine formats are not escaped by us: json.dumps writes every control and non-ASCII character as
    \\uXXXX (DEL too), so the bytes are inert ASCII and the value reads back exactly."""
    directory = hostile_adapter(tmp_path)
    as_json = cli("check", str(directory), "--peft", "0.13.2", "--format", "json").stdout
    as_sarif = cli("check", str(directory), "--peft", "0.13.2", "--format", "sarif").stdout
    for text in (as_json, as_sarif):
        assert text.isascii() and not raw_controls(text)
    report = json.loads(as_json)
    assert report["path"] == str(directory)
    assert {f["key"] for f in report["findings"]} >= {f"evil{HOSTILE}"}
    results = json.loads(as_sarif)["runs"][0]["results"]
    assert any(r.get("properties", {}).get("key") == f"evil{HOSTILE}" for r in results)


def test_merge_and_verify_text_escape_their_values() -> None:
    from peftdoctor.merge.result import MergeReport
    from peftdoctor.verification.result import Step, VerifyReport

    merged = MergeReport(adapter=f"a{HOSTILE}", base=f"b{HOSTILE}", out="o", dtype="auto", device="cpu",
                         tensors_merged=1, tensors_replaced=0, tensors_passed=0, bytes_written=0, seconds=0.0,
                         peak_rss_bytes=0, shards=1, notes=(f"n{HOSTILE}",))
    verified = VerifyReport(adapter=f"a{HOSTILE}", base=f"b{HOSTILE}", peft_type="LORA", task_type=None,
                            device="cpu", dtype="float32", peft_installed=None, mergeable=True, verdict="failed",
                            steps=(Step("load base", "failed", 0.0, f"d{HOSTILE}"),), notes=(f"n{HOSTILE}",))
    for report, rows in ((merged, 5), (verified, 4)):
        text = render(report, "text")
        assert not raw_controls(text) and text.count("\n") == rows, text


# --------------------------------------------------------------------------- paths that cannot be used


def test_directory_readable_but_not_searchable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode 0644 on a directory: its names can be listed, nothing in it can be stat'ed or opened. Was
    "internal error: PermissionError". Tests run as root, which the mode does not stop: the refusal is
    injected into os.stat (what pathlib's lstat calls) here; test_..._as_nobody below does it for real."""
    shutil.copytree(CLEAN, tmp_path / "a")
    real = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(os.fsdecode(path)).parent == tmp_path / "a":
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    for args in (["check", str(tmp_path / "a")], ["fix", str(tmp_path / "a"), "--peft", "0.13.2"]):
        done = RUNNER.invoke(app, args)
        assert done.exit_code == 2, done.output
        assert done.stderr.count("\n") == 1 and "internal error" not in done.stderr
        assert "search (x) permission" in done.stderr and str(tmp_path / "a") in done.stderr
    scanned = RUNNER.invoke(app, ["scan", str(tmp_path), "--peft", "0.13.2"])
    assert scanned.exit_code == 1 and "unusable" in scanned.output and "search (x) permission" in scanned.output


def _as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as nobody")
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import peftdoctor"], capture_output=True, cwd=ROOT, check=False)
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this Python: {probe.stderr[-200:]!r}")
    return prefix


def test_directory_readable_but_not_searchable_as_nobody() -> None:
    prefix = _as_nobody()
    where = Path(tempfile.mkdtemp(prefix="peftdoctor-nobody-"))  # pytest's tmp_path sits in a 0700 directory
    try:
        where.chmod(0o755)
        shutil.copytree(CLEAN, where / "a")
        (where / "a").chmod(0o644)
        runs = [subprocess.run([*prefix, sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True,
                               cwd=ROOT, timeout=120, check=False)
                for args in (["check", str(where / "a")], ["scan", str(where), "--peft", "0.13.2"])]
    finally:
        (where / "a").chmod(0o755)
        shutil.rmtree(where)
    checked, scanned = runs
    assert checked.returncode == 2 and checked.stderr.count("\n") == 1, checked.stderr
    assert "search (x) permission" in checked.stderr and "internal error" not in checked.stderr
    assert scanned.returncode == 1 and "search (x) permission" in scanned.stdout, scanned.stdout


def test_path_over_path_max_is_one_line_with_its_reason(tmp_path: Path) -> None:
    """A component over NAME_MAX and a path over PATH_MAX (OSError 36). Was "internal error" (check), or a
    line clipped before its reason (fix, scan, explain): the path is clipped, the reason kept."""
    for path in (str(tmp_path / ("x" * 300)), str(tmp_path) + ("/" + "y" * 200) * 25):
        for args in (["check", path], ["fix", path], ["scan", path], ["explain", path], ["check", str(CLEAN), path]):
            done = cli(*args)
            assert done.returncode == 2, (args[0], done.stderr[-300:])
            assert done.stderr.count("\n") == 1 and "internal error" not in done.stderr, done.stderr[-300:]
            assert done.stderr.rstrip().endswith("File name too long") and len(done.stderr) < 600, done.stderr[-300:]


def test_backup_suffix_that_cannot_name_a_file(tmp_path: Path) -> None:
    """Was "internal error: ValueError: Invalid name 'adapter_config.json/x'"; NUL can only come through run()
    or the Python API (argv cannot hold it). One line, exit 2, nothing read or written."""
    shutil.copytree(BROKEN, tmp_path / "a")
    before = sorted(os.listdir(tmp_path / "a")), (tmp_path / "a" / CONFIG).read_bytes()
    done = cli("fix", str(tmp_path / "a"), "--peft", "0.13.2", "--backup-suffix", "/x")
    assert done.returncode == 2 and done.stderr == ("peftdoctor: --backup-suffix '/x' holds '/': the backup is "
                                                   "FILE+SUFFIX beside the file, so a suffix is part of a file name "
                                                   "(e.g. .orig)\n") and done.stdout == ""
    assert run(["fix", str(tmp_path / "a"), "--peft", "0.13.2", "--backup-suffix", ".o\0rig"]) == 2
    from peftdoctor import apply_fix, plan_fix

    with pytest.raises(errors.UsageError, match="holds NUL"):
        apply_fix(plan_fix(str(tmp_path / "a"), peft="0.13.2"), ".o\0rig")
    assert (sorted(os.listdir(tmp_path / "a")), (tmp_path / "a" / CONFIG).read_bytes()) == before


# --------------------------------------------------------------------------- closed pipes and failed writes

PIPED = [["rules"], ["rules", "--format", "json"], ["check", str(CLEAN)], ["check", str(BROKEN), "--format", "json"],
         ["scan", str(ROOT / "fixtures")], ["fix", str(BROKEN), "--peft", "0.13.2", "--dry-run"], ["explain", "-"],
         ["--help"], ["check", "--help"], ["--version"]]


def test_a_closed_pipe_ends_quietly() -> None:
    """`peftdoctor ... | head`: the reader has gone before the first write. Was "peftdoctor: [Errno 32] Broken
    pipe" and exit 2 (1 for --help); now exit 0 and nothing said, as ripgrep does. All at once: ~1 s each."""
    log = "TypeError: LoraConfig.__init__() got an unexpected keyword argument 'use_original_init'\n"
    read, write = os.pipe()
    os.close(read)
    try:
        running = [(args, subprocess.Popen([sys.executable, "-m", "peftdoctor", *args], stdin=subprocess.PIPE,
                                           stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT))
                   for args in PIPED]
        done = [(args, *p.communicate(log, timeout=120)[1:], p.returncode) for args, p in running]
    finally:
        os.close(write)
    assert [(args, err, code) for args, err, code in done if code or err] == []


def test_a_closed_pipe_found_at_the_exit_flush_ends_quietly() -> None:
    """Text a library printed without flushing reaches the closed pipe only when Python flushes at exit:
    that was "Exception ignored ... BrokenPipeError" and exit 120."""
    script = ("import sys, typer; from peftdoctor.cli.app import main\n"
              "typer.echo = lambda text='', nl=True, err=False, **_: (sys.stderr if err else sys.stdout).write("
              "str(text) + ('\\n' if nl else ''))\n"
              "sys.argv = ['peftdoctor', 'rules']; main()\n")
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-c", script], stdout=write, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, timeout=120, check=False)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_stdout_names_the_stream() -> None:
    """Was "peftdoctor: [Errno 28] No space left on device": which write?"""
    with open("/dev/full", "w") as full:
        for args in (["rules"], ["check", str(CLEAN)]):
            done = subprocess.run([sys.executable, "-m", "peftdoctor", *args], stdout=full, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT, timeout=120, check=False)
            assert (done.returncode, done.stderr) == (2, "peftdoctor: standard output: No space left on device\n")


@pytest.mark.parametrize(("call", "error", "said"), [
    # An immutable adapter_config.json (chattr +i): root may write the directory, but the rename onto the
    # file fails with EPERM. Was: exit 2 with adapter_config.json.orig left beside the untouched file.
    ("replace", PermissionError(errno.EPERM, "Operation not permitted"),
     "{config}: write failed, original left in place: Operation not permitted\n"),
    # The backup cannot be made: the line named the config only, not the file that failed.
    ("link", OSError(errno.ENOSPC, "No space left on device"), "{config}.orig: No space left on device\n"),
], ids=["rename-refused", "backup-refused"])
def test_a_failed_rewrite_leaves_nothing_and_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            call: str, error: OSError, said: str) -> None:
    shutil.copytree(BROKEN, tmp_path / "a")
    config = tmp_path / "a" / CONFIG
    before = sorted(os.listdir(tmp_path / "a")), config.read_bytes()

    def refuse(src: Any, dst: Any) -> None:  # as the kernel reports a rename or link: both names
        raise type(error)(error.errno, error.strerror, os.fsdecode(src), None, os.fsdecode(dst))

    monkeypatch.setattr(os, call, refuse)
    done = RUNNER.invoke(app, ["fix", str(tmp_path / "a"), "--peft", "0.13.2"])
    assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
    assert done.stderr.endswith(said.format(config=config)), done.stderr
    assert (sorted(os.listdir(tmp_path / "a")), config.read_bytes()) == before


def test_fix_of_an_immutable_file(tmp_path: Path) -> None:
    shutil.copytree(BROKEN, tmp_path / "a")
    config = tmp_path / "a" / CONFIG
    if subprocess.run(["chattr", "+i", str(config)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i does not work here (not root, or a filesystem without the flag)")
    try:
        before = sorted(os.listdir(tmp_path / "a")), config.read_bytes()
        done = cli("fix", str(tmp_path / "a"), "--peft", "0.13.2")
    finally:
        subprocess.run(["chattr", "-i", str(config)], check=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Operation not permitted" in done.stderr
    assert (sorted(os.listdir(tmp_path / "a")), config.read_bytes()) == before


def test_a_failed_output_directory_names_the_file(tmp_path: Path) -> None:
    """merge and verify --out write through io/staging: an OSError there was raised as it was (verify printed
    "[Errno 13] Permission denied" or, from write(), no file at all); now one WriteFailed line, nothing left."""
    from peftdoctor.io.staging import staged

    out = tmp_path / "merged"
    with pytest.raises(errors.WriteFailed) as refused, staged(out) as staging:
        raise PermissionError(errno.EACCES, "Permission denied", str(staging / "model.safetensors"))
    message = errors.one_line(refused.value)
    assert message.startswith(f"--out {out}: write failed (") and "model.safetensors: Permission denied" in message
    assert errors.exit_code(refused.value) == 2 and os.listdir(tmp_path) == []
