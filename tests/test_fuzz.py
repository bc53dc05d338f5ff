"""Malformed input never crashes `peftdoctor check`.

Property tests feed broken adapter_config.json and adapter_model.safetensors files to the CLI
in-process and require: no exception escapes, no traceback is printed, the exit code is 0, 1
or 2, and with --format json a 0/1 exit prints one JSON report whose exit code agrees with its
findings. Explicit cases from the spec then run `python -m peftdoctor check` in a subprocess.

Needs no torch: weights are written raw with tests.adapters.write_safetensors_header.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftdoctor.cli.app import app
from tests.adapters import DTYPE_SIZES, write_safetensors_header

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BROKEN = ROOT / "fixtures" / "broken-adapter"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

FUZZ = settings(
    max_examples=int(os.environ.get("PEFTDOCTOR_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,  # the same examples on every run and machine; nothing stored in .hypothesis/
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RUNNER = CliRunner()
# Scratch directories per example: tmpfs where there is one (rmdir on a disk costs ~3 ms each).
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
SEVERITIES = {"info", "warning", "error"}
COMPAT_RESULTS = {"ok", "drops_keys", "fails"}

# --------------------------------------------------------------------------- seeds

REAL_CONFIG: dict[str, Any] = json.loads((CLEAN / CONFIG).read_text())
REAL_WEIGHTS: bytes = (CLEAN / WEIGHTS).read_bytes()
SEED_CONFIGS: list[dict[str, Any]] = [
    REAL_CONFIG,
    json.loads((BROKEN / CONFIG).read_text()),
    {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM",
     "base_model_name_or_path": "peftdoctor/tiny-llama", "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"q_proj": 3}},
    {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"],
     "task_type": "CAUSAL_LM", "fan_in_fan_out": False, "init_ia3_weights": True},
    {"peft_type": "LOHA", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "rank_dropout": 0.0},
    {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "token_dim": 16, "num_layers": 2,
     "task_type": "CAUSAL_LM", "prompt_tuning_init": "RANDOM"},
    {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "token_dim": 16, "num_layers": 2,
     "num_attention_heads": 2, "encoder_hidden_size": 16, "prefix_projection": False},
]
REAL_TENSORS: list[str] = sorted(json.loads(REAL_WEIGHTS[8:8 + int.from_bytes(REAL_WEIGHTS[:8], "little")]))

# --------------------------------------------------------------------------- strategies

HUGE_NUMBERS = st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 1e308, -1e308,
                                float("inf"), float("-inf"), float("nan"), -0.0, 5e-324])
UNICODE_TEXT = st.sampled_from(["q_proj\u200b", "ｑ_proj", "q_pröj", "\U0001f600", "\ud800", "\x00", "LORA\u0301",
                                "ﬁ", "İ", "\u202eLORA", ""]) | st.text(max_size=12)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | HUGE_NUMBERS | UNICODE_TEXT
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(UNICODE_TEXT, inner, max_size=4),
    max_leaves=12,
)
PEFT_TYPES = st.sampled_from(["LORA", "lora", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "ADALORA", "PROMPT_TUNING",
                              "PREFIX_TUNING", "P_TUNING", "VERA", "FOURIERFT", "NOT_A_PEFT_TYPE", "XLORA"])


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A plausible config with a few keys removed, retyped, added or made extreme."""
    config = dict(draw(st.sampled_from(SEED_CONFIGS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["remove", "retype", "add", "peft_type", "huge", "unicode"]))
        keys = sorted(config)
        if op == "remove" and keys:
            config.pop(draw(st.sampled_from(keys)))
        elif op == "retype" and keys:
            config[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
        elif op == "add":
            config[draw(UNICODE_TEXT)] = draw(JSON_VALUES)
        elif op == "peft_type":
            config["peft_type"] = draw(PEFT_TYPES | UNICODE_TEXT | JSON_VALUES)
        elif op == "huge":
            key = draw(st.sampled_from(["r", "lora_alpha", "lora_dropout", "num_virtual_tokens", "alpha", "token_dim"]))
            config[key] = draw(HUGE_NUMBERS)
        elif op == "unicode":
            key = draw(st.sampled_from(["target_modules", "modules_to_save", "rank_pattern", "peft_version",
                                        "base_model_name_or_path", "task_type"]))
            config[key] = draw(st.lists(UNICODE_TEXT, max_size=3) | UNICODE_TEXT
                               | st.dictionaries(UNICODE_TEXT, HUGE_NUMBERS, max_size=2))
    return config


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


CONFIG_BYTES = st.one_of(
    st.binary(max_size=64),  # not JSON, not UTF-8
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(_dump),  # random JSON, mostly not an object
    mutated_configs().map(_dump),
    mutated_configs().map(lambda c: _dump(c)[: len(_dump(c)) // 2]),  # cut mid-document
)

TENSOR_NAMES = st.sampled_from(REAL_TENSORS) | UNICODE_TEXT
DTYPES = st.sampled_from(sorted(DTYPE_SIZES)) | st.sampled_from(["F33", "", "f32", "Q4_K", "float32"])
SHAPES = st.lists(st.integers(-3, 64) | st.sampled_from([2**31, 2**63 - 1]), max_size=4)
OFFSET = st.integers(-10, 4096) | st.sampled_from([-(2**63), 2**63 - 1, 2**64, 10**30])


@st.composite
def safetensors_bytes(draw: st.DrawFn) -> bytes:
    """A safetensors file written from scratch, then possibly corrupted."""
    tensors = draw(st.dictionaries(TENSOR_NAMES, st.tuples(DTYPES, SHAPES), max_size=6))
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        path = Path(tmp) / WEIGHTS
        write_safetensors_header(
            path,
            tensors,
            truncate=draw(st.none() | st.integers(0, 256)),
            lie_header_len=draw(st.none() | st.integers(0, 2**64 - 1) | st.integers(0, 512)),
            offsets=draw(st.none() | st.dictionaries(TENSOR_NAMES, st.tuples(OFFSET, OFFSET), max_size=3)),
            raw_header=draw(st.none() | st.binary(max_size=48) | JSON_VALUES.map(_dump)
                            | st.dictionaries(TENSOR_NAMES, JSON_VALUES, max_size=3).map(_dump)),
            metadata=draw(st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
        )
        return path.read_bytes()


@st.composite
def mutated_real_weights(draw: st.DrawFn) -> bytes:
    """The clean fixture's weights with bytes overwritten in the header and/or a truncated tail."""
    data = bytearray(REAL_WEIGHTS)
    header_end = 8 + int.from_bytes(REAL_WEIGHTS[:8], "little")
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, header_end - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.none() | st.integers(0, len(data)))])


# Header values no writer produces: lists inside shapes or as dtypes, dims with hundreds of digits.
HOSTILE_DIMS = st.integers(-3, 64) | st.sampled_from([2**64, 10**40, 10**400, 2**31]) | st.lists(
    st.integers(0, 4), max_size=2) | st.text(max_size=3) | st.none() | st.floats()
HOSTILE_ENTRIES = st.fixed_dictionaries({
    "dtype": DTYPES | st.lists(DTYPES, max_size=2) | st.none() | st.integers(),
    "shape": st.lists(HOSTILE_DIMS, max_size=4) | HOSTILE_DIMS,
    "data_offsets": st.lists(OFFSET, min_size=2, max_size=2) | st.lists(OFFSET, max_size=3)
    | st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=2, max_size=2),
})


@st.composite
def hostile_header_bytes(draw: st.DrawFn) -> bytes:
    """A safetensors file whose JSON header holds values of any shape, padded and followed by data."""
    header: dict[str, Any] = draw(st.dictionaries(TENSOR_NAMES, HOSTILE_ENTRIES, max_size=4))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=2) | JSON_VALUES)
    raw = _dump(header)
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(draw(st.integers(0, 64)))


WEIGHT_BYTES = (st.none() | st.just(REAL_WEIGHTS) | safetensors_bytes() | mutated_real_weights()
                | hostile_header_bytes())

# What may stand where a file is expected. Each is made by `make_oddity`; none may hang or crash a command.
ODDITIES = ("none", "config-fifo", "weights-fifo", "config-dir", "weights-dir", "config-link-out",
            "weights-link-devzero", "config-link-loop", "config-dangling", "weights-link-fifo-out",
            "nested-config-dir", "subdir-file-loop")

# --------------------------------------------------------------------------- running the CLI


def write_adapter(directory: Path, config: Optional[bytes], weights: Optional[bytes]) -> Path:
    if config is not None:
        (directory / CONFIG).write_bytes(config)
    if weights is not None:
        (directory / WEIGHTS).write_bytes(weights)
    return directory


def make_oddity(directory: Path, oddity: str) -> None:
    """Put `oddity` in place of a file of the adapter at `directory` (see ODDITIES); links that point
    outside go to a sibling of `directory`, so it must live in a directory of its own (a tmp dir)."""
    if oddity == "none":
        return
    target = directory / (CONFIG if oddity.startswith("config") else WEIGHTS)
    outside = directory.parent / f"outside-{directory.name}"
    if oddity in ("nested-config-dir", "subdir-file-loop"):
        sub = directory / "sub"
        sub.mkdir(exist_ok=True)
        if oddity == "nested-config-dir":
            (sub / CONFIG).mkdir(exist_ok=True)
        else:
            (sub / "loop").symlink_to(sub)  # a link to its own directory: never followed by a walk
            (sub / CONFIG).symlink_to(sub / "loop" / CONFIG)  # resolves through itself: ELOOP
        return
    if target.exists() or target.is_symlink():
        target.unlink()
    if oddity.endswith("fifo") and oddity != "weights-link-fifo-out":
        os.mkfifo(target)
    elif oddity.endswith("-dir"):
        target.mkdir()
    elif oddity == "config-link-out":
        outside.write_bytes(_dump(REAL_CONFIG))
        target.symlink_to(outside)
    elif oddity == "weights-link-devzero":
        target.symlink_to("/dev/zero")
    elif oddity == "config-link-loop":
        target.symlink_to(target.name)
    elif oddity == "config-dangling":
        target.symlink_to(directory / "nowhere.json")
    elif oddity == "weights-link-fifo-out":
        if not outside.exists():
            os.mkfifo(outside)
        target.symlink_to(outside)


def run_in_process(args: Sequence[str]) -> Any:
    """Invoke the typer app and check the invariants that hold for every input."""
    result = RUNNER.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        escaped = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else repr(result.exception)
        raise AssertionError(f"exception escaped `peftdoctor {' '.join(args)}`:\n{escaped}")
    assert result.exit_code in (0, 1, 2), f"exit code {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    return result


def assert_json_report(stdout: str, exit_code: int) -> dict[str, Any]:
    """stdout is one contract-shaped JSON report, and exit 1 means an error finding (default --fail-on)."""
    report = json.loads(stdout)
    assert isinstance(report, dict) and report.get("format_version") == 1, stdout[:500]
    assert {"path", "peft_installed", "written_by", "findings", "compatibility"} <= set(report), sorted(report)
    for finding in report["findings"]:
        assert {"code", "severity", "key", "file", "message", "fix"} <= set(finding), finding
        assert finding["severity"] in SEVERITIES, finding
    for entry in report["compatibility"]:
        assert entry["result"] in COMPAT_RESULTS and isinstance(entry["dropped"], list), entry
    has_error = any(f["severity"] == "error" for f in report["findings"])
    assert (exit_code == 1) == has_error, f"exit {exit_code} but findings are {report['findings']}"
    return report


def check_dir(directory: Path, fmt: str = "json", extra: Sequence[str] = ()) -> None:
    result = run_in_process(["check", str(directory), "--format", fmt, *extra])
    if result.exit_code in (0, 1):
        if fmt == "json":
            assert_json_report(result.stdout, result.exit_code)
        elif fmt == "sarif":
            assert isinstance(json.loads(result.stdout), dict)
    else:
        assert result.output.strip(), "exit 2 without saying why"


# --------------------------------------------------------------------------- properties


@FUZZ
@given(config=CONFIG_BYTES, weights=st.none() | st.just(REAL_WEIGHTS), fmt=st.sampled_from(["json", "text", "sarif"]))
def test_malformed_config_never_crashes(config: bytes, weights: Optional[bytes], fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_dir(write_adapter(Path(tmp), config, weights), fmt)


@FUZZ
@given(config=mutated_configs(), weights=WEIGHT_BYTES)
def test_mutated_config_with_any_weights_never_crashes(config: dict[str, Any], weights: Optional[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_dir(write_adapter(Path(tmp), _dump(config), weights))


@FUZZ
@given(weights=safetensors_bytes() | mutated_real_weights(), fmt=st.sampled_from(["json", "sarif"]))
def test_corrupt_safetensors_never_crashes(weights: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_dir(write_adapter(Path(tmp), _dump(REAL_CONFIG), weights), fmt)


@settings(FUZZ, max_examples=30)
@given(peft=st.text(max_size=16) | st.sampled_from(["0.0.1", "0.5.0", "0.13.2", "99.0.0", "1.0.0rc1", "v0.10", "0.10"]),
       fail_on=st.sampled_from(["error", "warning", "info", "bogus"]))
def test_any_peft_and_fail_on_option_never_crashes(peft: str, fail_on: str) -> None:
    check_dir(BROKEN, "json", ["--peft", peft, "--fail-on", fail_on] if fail_on != "bogus" else ["--peft", peft])


def test_fuzz_harness_detects_failures() -> None:
    """The invariants are not vacuous: the clean fixture passes, the broken one has errors."""
    clean = run_in_process(["check", str(CLEAN), "--format", "json"])
    assert clean.exit_code == 0, clean.output
    assert_json_report(clean.stdout, 0)
    broken = run_in_process(["check", str(BROKEN), "--format", "json"])
    assert broken.exit_code == 1, broken.output
    codes = {f["code"] for f in assert_json_report(broken.stdout, 1)["findings"]}
    assert {"PD206", "PD207"} <= codes, codes


# --------------------------------------------------------------------------- explicit cases, real process

Builder = Callable[[Path], Path]


def _adapter(config: Optional[bytes] = None, weights: Optional[bytes] = REAL_WEIGHTS) -> Builder:
    def build(tmp: Path) -> Path:
        directory = tmp / "adapter"
        directory.mkdir()
        return write_adapter(directory, _dump(REAL_CONFIG) if config is None else config, weights)
    return build


def _with_config(**changes: Any) -> bytes:
    return _dump({**REAL_CONFIG, **changes})


def _corrupt_weights(**corruption: Any) -> Builder:
    def build(tmp: Path) -> Path:
        directory = _adapter()(tmp)
        header = json.loads(REAL_WEIGHTS[8:8 + int.from_bytes(REAL_WEIGHTS[:8], "little")])
        tensors = {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
        write_safetensors_header(directory / WEIGHTS, tensors, **corruption)
        return directory
    return build


def _unreadable(tmp: Path) -> Path:
    directory = _adapter()(tmp)
    (directory / CONFIG).chmod(0)
    return directory


def _symlink_out(name: str) -> Builder:
    def build(tmp: Path) -> Path:
        directory = _adapter()(tmp)
        outside = tmp / f"outside-{name}"
        outside.write_bytes((directory / name).read_bytes())
        (directory / name).unlink()
        (directory / name).symlink_to(outside)
        return directory
    return build


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _full_model(tmp: Path) -> Path:
    directory = tmp / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    write_safetensors_header(directory / "model.safetensors", {"model.embed_tokens.weight": ("F32", [8, 16])})
    return directory


# name, builder, accepted exit codes, text the output must contain
SPEC_CASES: list[tuple[str, Builder, set[int], str]] = [
    ("not-json", _adapter(b"{this is not json"), {1, 2}, CONFIG),
    ("not-utf8", _adapter(b"\xff\xfe\x00{"), {1, 2}, CONFIG),
    ("json-array", _adapter(b"[1, 2, 3]"), {1, 2}, CONFIG),
    ("json-string", _adapter(b'"LORA"'), {1, 2}, CONFIG),
    ("wrong-types", _adapter(_with_config(r="eight", lora_alpha=[], target_modules=5)), {1}, '"r"'),
    ("unknown-peft-type", _adapter(_with_config(peft_type="NOT_A_PEFT_TYPE")), {1}, "NOT_A_PEFT_TYPE"),
    ("int-too-long-to-parse", _adapter(b'{"peft_type": "LORA", "r": 1' + b"0" * 5000 + b"}"), {1, 2}, CONFIG),
    ("deeply-nested", _adapter(b"[" * 100_000 + b"]" * 100_000), {1, 2}, CONFIG),
    ("truncated-header", _corrupt_weights(truncate=20), {1}, WEIGHTS),
    ("header-only-4-bytes", _corrupt_weights(truncate=4), {1}, WEIGHTS),
    ("header-len-beyond-file", _corrupt_weights(lie_header_len=10**9), {1}, WEIGHTS),
    ("header-len-2**64-1", _corrupt_weights(lie_header_len=2**64 - 1), {1}, WEIGHTS),
    ("garbage-header", _corrupt_weights(raw_header=b"\x00\xffnot json at all"), {1}, WEIGHTS),
    ("data-truncated", _corrupt_weights(truncate=len(REAL_WEIGHTS) - 100), {1}, WEIGHTS),
    ("unreadable-config", _unreadable, {1, 2}, CONFIG),
    ("symlinked-weights-outside", _symlink_out(WEIGHTS), {1}, WEIGHTS),
    ("symlinked-config-outside", _symlink_out(CONFIG), {1}, CONFIG),
    ("missing-directory", lambda tmp: tmp / "does-not-exist", {2}, "does-not-exist"),
    ("empty-directory", _empty, {2}, "empty"),
    ("full-model-directory", _full_model, {2}, "model"),
]


def run_subprocess(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "peftdoctor", "check", str(path), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("name, build, exit_codes, mentions", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_spec_case_in_a_real_process(tmp_path: Path, name: str, build: Builder, exit_codes: set[int],
                                     mentions: str) -> None:
    if name == "unreadable-config" and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    path = build(tmp_path)
    proc = run_subprocess(path, "--format", "json")
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both and "internal error" not in both, both
    assert proc.returncode in exit_codes, f"exit {proc.returncode}, wanted {exit_codes}\n{both}"
    assert mentions in both, f"output does not mention {mentions!r}:\n{both}"
    if proc.returncode in (0, 1):
        assert_json_report(proc.stdout, proc.returncode)
    else:
        assert proc.stderr.strip() or proc.stdout.strip(), "exit 2 without a message"


@settings(FUZZ, max_examples=150)
@given(config=mutated_configs(), weights=WEIGHT_BYTES,
       peft=st.sampled_from(["0.3.0", "0.6.2", "0.9.0", "0.13.2", "0.14.0", "0.21.2"]))
def test_fix_never_crashes_and_is_idempotent(config: dict[str, Any], weights: Optional[bytes], peft: str) -> None:
    """Whatever the config, fix writes valid JSON or nothing, and a second run has nothing left to do."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_adapter(Path(tmp), _dump(config), weights)
        first = run_in_process(["fix", str(directory), "--peft", peft, "--backup-suffix", ""])
        event(f"fix exit {first.exit_code}")
        if first.exit_code != 0:
            return
        json.loads((directory / CONFIG).read_text())
        second = run_in_process(["fix", str(directory), "--peft", peft, "--check"])
        assert second.exit_code == 0, second.output


@settings(FUZZ, max_examples=100)
@given(text=st.text(max_size=2000))
def test_explain_never_crashes(text: str) -> None:
    result = RUNNER.invoke(app, ["explain", "-"], input=text)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1)


# --------------------------------------------------------------------------- hostile input, every command

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not standard JSON")


def _standard_json(text: str) -> bool:
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return False
    return True


def meaning_changes(plan: Any, force: bool = False) -> list[str]:
    """What a fix plan would break: output that is not standard JSON, a meaning-bearing key dropped
    without an exact equivalence, a --force change made without --force, an rsLoRA fold whose
    scaling differs. An empty list is the invariant (scripts/fuzz.py counts the rest)."""
    from peftdoctor.ops.fix import new_text
    from peftdoctor.peft import compat

    problems = []
    if plan.snapshot is not None and _standard_json(plan.snapshot.text):  # a NaN already there is kept
        try:  # new_text refuses (ValueError) to write NaN/Infinity, json.loads to read them: either says so
            json.loads(new_text(plan), parse_constant=_refuse_constant)
        except ValueError as exc:
            problems.append(f"fix output is not standard JSON: {exc}")
    if plan.refused:
        return problems  # nothing is written
    before, after = plan.original, plan.result
    # exclude_modules (or 'all-linear') spelled out as the list of modules the weights hold is exact.
    spelled_out = any(c.key == "target_modules" and c.action in ("set", "add") and isinstance(c.after, list)
                      for c in plan.changes)
    for change in plan.changes:
        if change.key == "exclude_modules" and change.action == "drop" and spelled_out:
            continue
        if change.forced and not force:
            problems.append(f"{change.key}: a --force change without --force")
        elif (change.action == "drop" and not change.forced and change.key != "use_rslora"
              and compat.noop_reason(before, change.key) is None):
            problems.append(f"{change.key}: meaning-bearing key dropped ({change.reason})")
    folded = before.get("use_rslora") is True and after.get("use_rslora") is not True
    if folded and not force and not (before.get("rank_pattern") or before.get("alpha_pattern")):
        r, alpha, new_alpha = before.get("r", 8), before.get("lora_alpha", 8), after.get("lora_alpha", 8)
        if not math.isclose(new_alpha / r, alpha / math.sqrt(r), rel_tol=1e-9):
            problems.append(f"rsLoRA fold: lora_alpha {alpha} -> {new_alpha} changes the scaling at r={r}")
    return problems


@contextlib.contextmanager
def no_hang(seconds: int = 30) -> Iterator[None]:
    """Fail instead of blocking forever (a fifo opened for reading waits for a writer)."""
    def hung(*_args: Any) -> None:
        raise AssertionError(f"still running after {seconds} s: a command blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@FUZZ
@given(weights=hostile_header_bytes(), fmt=st.sampled_from(["json", "text", "sarif"]))
def test_hostile_header_values_never_crash(weights: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_dir(write_adapter(Path(tmp), _dump(REAL_CONFIG), weights), fmt)


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 120))
@given(config=CONFIG_BYTES | mutated_configs().map(_dump), weights=WEIGHT_BYTES, oddity=st.sampled_from(ODDITIES))
def test_file_system_oddities_never_crash_or_hang(config: bytes, weights: Optional[bytes], oddity: str) -> None:
    """check, fix (plan only), scan and explain on an adapter with a fifo, a directory or a link in
    place of a file: one line and exit 0/1/2, never a traceback or a blocked read."""
    with tempfile.TemporaryDirectory() as tmp, no_hang():
        directory = Path(tmp) / "adapter"
        directory.mkdir()
        write_adapter(directory, config, weights)
        make_oddity(directory, oddity)
        check_dir(directory)
        run_in_process(["fix", str(directory), "--dry-run", "--peft", "0.13.2"])
        scanned = run_in_process(["scan", str(tmp), "--format", "json"])
        if scanned.exit_code in (0, 1) or scanned.stdout.strip():
            assert json.loads(scanned.stdout)["format_version"] == 1
        # explain reads pipes by design (`explain <(cmd)`), so a fifo is given its text on stdin instead.
        assert RUNNER.invoke(app, ["explain", "-"], input=config).exit_code in (0, 1)


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 150))
@given(config=mutated_configs(), weights=st.none() | st.just(REAL_WEIGHTS),
       peft=st.sampled_from(["0.3.0", "0.9.0", "0.12.0", "0.13.2", "0.21.2"]),
       serve=st.none() | st.sampled_from(["vllm==0.6.3", "vllm", "tgi"]))
def test_fix_plan_keeps_meaning(config: dict[str, Any], weights: Optional[bytes], peft: str,
                                serve: Optional[str]) -> None:
    """Without --force, a plan drops or changes no meaning-bearing key, and writes standard JSON."""
    from peftdoctor.errors import UnusableInput
    from peftdoctor.ops.fix import plan

    with tempfile.TemporaryDirectory() as tmp:
        write_adapter(Path(tmp), _dump(config), weights)
        try:
            the_plan = plan(tmp, peft=peft, serve=serve)
        except UnusableInput:
            return
        assert meaning_changes(the_plan) == []


def test_meaning_oracle_is_not_vacuous(tmp_path: Path) -> None:
    """The oracle flags a forced drop, a wrong rsLoRA fold and non-standard JSON (a plan made by hand)."""
    from dataclasses import replace

    from peftdoctor.io.atomic import Snapshot
    from peftdoctor.ops.fix import Change, plan

    config = {**REAL_CONFIG, "use_rslora": True, "lora_alpha": 16, "r": 4}
    write_adapter(tmp_path, _dump(config), REAL_WEIGHTS)
    honest = plan(str(tmp_path), peft="0.6.2")  # before rsLoRA (0.8.0): fix folds it into lora_alpha
    assert meaning_changes(honest) == [] and honest.changed, honest
    wrong = replace(honest, result={**honest.result, "lora_alpha": 16},
                    changes=(*honest.changes, Change("use_dora", "drop", "x", True, forced=True)))
    found = meaning_changes(wrong)
    assert any("rsLoRA fold" in p for p in found) and any("--force" in p for p in found), found
    infinite = replace(honest, result={**honest.result, "lora_alpha": float("inf")},
                       snapshot=honest.snapshot or Snapshot("", ""))
    assert any("standard JSON" in p for p in meaning_changes(infinite))
