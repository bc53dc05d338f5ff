"""`check OWNER/NAME[@REV]` and `scan --hub AUTHOR` read adapters where they live, on a loopback Hub.

The Hub is tests/hub_server.py; the client is huggingface_hub's real code, never a mock. huggingface_hub reads
HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN and its timeouts when imported, so each run is a subprocess with its own
environment. Every online result is compared with `check DIR` of the very files that were served.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from peftdoctor.rules.weights import VALUES_NOT_READ
from tests.adapters import write_safetensors_header
from tests.hub_server import commit_sha, serve_repos

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BROKEN = ROOT / "fixtures" / "broken-adapter"
PEFT = "0.21.2"
FIRST_READ = 100_000  # peftdoctor.io.hub.FIRST_READ, restated: the test pins what the client may fetch
TOKEN = "hf_peftdoctorTestSecret0123456789"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _env(tmp: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HF_") and k.upper() not in _PROXY_VARS}
    env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp / "cache"), HF_HOME=str(tmp / "home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


def run(tmp: Path, env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    work = tmp / "work"
    work.mkdir(exist_ok=True)  # an empty cwd: a repo id never collides with a relative path
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, cwd=work,
                          env=env, timeout=timeout)


def reports(done: subprocess.CompletedProcess[str]) -> list[dict]:
    try:
        data = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"exit {done.returncode}, no JSON on stdout\nstdout: {done.stdout!r}\nstderr: {done.stderr!r}")
    return data["reports"] if "reports" in data else [data]


def one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A failure reported as one stderr line with exit 2, nothing on stdout, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _adapter(directory: Path, config_from: Path = CLEAN, **config: object) -> Path:
    directory.mkdir(parents=True)
    data = json.loads((config_from / "adapter_config.json").read_text())
    data.update(config)
    (directory / "adapter_config.json").write_text(json.dumps(data, indent=2))
    return directory


def _q_v_tensors(r: int, hidden: int, layers: int) -> dict[str, tuple[str, list[int]]]:
    tensors = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = ("F32", [r, hidden])
            tensors[f"{prefix}.lora_B.weight"] = ("F32", [hidden, r])
    return tensors


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Repo id -> the directory served as it: the examples, and adapters built to stress the header read."""
    tmp = tmp_path_factory.mktemp("served")
    big = _adapter(tmp / "big-weights", r=64)  # 4 MiB of tensors behind a small header
    write_safetensors_header(big / "adapter_model.safetensors", _q_v_tensors(64, 4096, 1), max_data=1 << 30)
    wide = _adapter(tmp / "big-header", r=2)  # 600 layers: a header longer than the first range read
    write_safetensors_header(wide / "adapter_model.safetensors", _q_v_tensors(2, 8, 600))
    cut = _adapter(tmp / "truncated-weights")
    shutil.copy(CLEAN / "adapter_model.safetensors", cut / "adapter_model.safetensors")
    data = (cut / "adapter_model.safetensors").read_bytes()
    (cut / "adapter_model.safetensors").write_bytes(data[: len(data) - 700])
    pickled = _adapter(tmp / "pickle-only")
    (pickled / "adapter_model.bin").write_bytes(b"not unpickled")
    full = tmp / "full-model"
    full.mkdir()
    (full / "config.json").write_text('{"model_type": "llama"}')
    (full / "model.safetensors").write_bytes((CLEAN / "adapter_model.safetensors").read_bytes())
    return {"t/clean": CLEAN, "t/broken": BROKEN, "t/big-weights": big, "t/big-header": wide,
            "t/truncated-weights": cut, "t/pickle-only": pickled, "t/full-model": full}


VALUE_ONLY = {"PD211", "PD212", "PD213"}  # need tensor data, which a Hub check never fetches


def test_online_check_is_the_directory_check(served: dict[str, Path], tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    bytes_out: Counter = Counter()
    with serve_repos(served, log=log, served=bytes_out) as hub:
        env = _env(tmp_path, hub)
        online = run(tmp_path, env, "check", *served, "--format", "json", "--peft", PEFT)
        n_online = len(log)
        local = run(tmp_path, env, "check", *map(str, served.values()), "--format", "json", "--peft", PEFT)
    assert len(log) == n_online, f"`check DIR` made requests: {log[n_online:]}"
    assert online.returncode == local.returncode == 2  # the full model is no adapter, in both readings
    assert online.stderr == local.stderr == ""
    got, want = reports(online), reports(local)
    assert [r["path"] for r in got] == list(served)
    for (repo_id, directory), hub_report, dir_report in zip(served.items(), got, want):
        # Tensor values are read only from a local copy: the Hub reading says so instead of judging them.
        valued = [f for f in dir_report["findings"] if f["code"] in VALUE_ONLY]
        dir_report["findings"] = [f for f in dir_report["findings"] if f["code"] not in VALUE_ONLY]
        if valued:  # a per-release verdict that a value finding decides (PD212: computes the base) is the local one's
            dir_report.pop("compatibility"), hub_report.pop("compatibility")
        if hub_report.get("kind") == "peft-adapter" and repo_id in ("t/clean", "t/broken", "t/big-weights"):
            assert VALUES_NOT_READ in hub_report["skipped"], repo_id  # said, where a local check reads them
        hub_report["skipped"] = [s for s in hub_report.get("skipped", []) if s != VALUES_NOT_READ]
        # Messages name what the user typed: the repo id in one reading, the directory in the other.
        assert json.dumps(hub_report) == json.dumps(dir_report).replace(str(directory), repo_id), repo_id
    codes = {repo_id: {f["code"] for f in r["findings"]} for repo_id, r in zip(served, got)}
    assert codes["t/clean"] == set() and {"PD205"} <= codes["t/truncated-weights"], codes
    assert "PD203" in codes["t/pickle-only"]

    weights = {k.split("/adapter_model")[0]: n for k, n in bytes_out.items() if k.endswith(".safetensors")}
    big_size = (served["t/big-weights"] / "adapter_model.safetensors").stat().st_size
    assert big_size > 4_000_000 and weights["t/big-weights"] <= FIRST_READ, "tensor data was fetched"
    header_len = int.from_bytes((served["t/big-header"] / "adapter_model.safetensors").read_bytes()[:8], "little")
    assert header_len > FIRST_READ
    # The first read, then exactly the rest of the header: a second range read, and not a byte of tensors.
    assert weights["t/big-header"] == FIRST_READ + header_len
    assert not any(k.endswith("adapter_model.bin") or k.endswith("/model.safetensors") for k in bytes_out)


def test_requests_for_one_repo(served: dict[str, Path], tmp_path: Path) -> None:
    """Model info, the config (HEAD + GET, into the cache), one range read, the base's config.json. A second
    check finds the config of that commit in the cache and fetches only the header again."""
    log: list[tuple[str, str]] = []
    with serve_repos({"t/clean": CLEAN}, log=log) as hub:
        env = _env(tmp_path, hub)
        first = run(tmp_path, env, "check", "t/clean", "--peft", PEFT)
        n_first = len(log)
        second = run(tmp_path, env, "check", "t/clean", "--peft", PEFT)
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    sha = commit_sha("t/clean", CLEAN)
    base = json.loads((CLEAN / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert [p for _, p in log[:n_first]] == [
        "/api/models/t/clean", f"/t/clean/resolve/{sha}/adapter_config.json",
        f"/t/clean/resolve/{sha}/adapter_config.json", f"/t/clean/resolve/{sha}/adapter_model.safetensors",
        f"/{base}/resolve/main/config.json"]
    assert [m for m, _ in log[:n_first]] == ["GET", "HEAD", "GET", "GET", "HEAD"]
    assert [p for _, p in log[n_first:]] == [
        "/api/models/t/clean", f"/t/clean/resolve/{sha}/adapter_model.safetensors",
        f"/{base}/resolve/main/config.json"]
    cached = Path(tmp_path / "cache" / "models--t--clean" / "snapshots" / sha)
    assert sorted(os.listdir(cached)) == ["adapter_config.json"]  # the weights were never downloaded


def test_revision(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    with serve_repos({"t/repo": CLEAN, "t/repo@v1": BROKEN}, log=log) as hub:
        env = _env(tmp_path, hub)
        at_branch = run(tmp_path, env, "check", "t/repo@v1", "--format", "json", "--peft", PEFT)
        at_sha = run(tmp_path, env, "check", f"t/repo@{commit_sha('t/repo', BROKEN)}", "--format", "json",
                     "--peft", PEFT)
        main = run(tmp_path, env, "check", "t/repo", "--format", "json", "--peft", PEFT)
        missing = run(tmp_path, env, "check", "t/repo@v2", "--peft", PEFT)
        local = run(tmp_path, env, "check", str(BROKEN), "--format", "json", "--peft", PEFT)
    want = reports(local)[0]["findings"]
    assert want and reports(at_branch)[0]["findings"] == want and reports(at_sha)[0]["findings"] == want
    assert reports(main)[0]["findings"] == [] and main.returncode == 0
    one_line(missing, "t/repo@v2", "no revision 'v2'", "cache")
    assert ("GET", "/api/models/t/repo/revision/v1") in log


def _download(tmp: Path, env: dict[str, str], repo_id: str) -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from huggingface_hub import snapshot_download; "
                           "snapshot_download(sys.argv[1])", repo_id], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_offline_and_unreachable_fall_back_to_the_cache(tmp_path: Path) -> None:
    with serve_repos({"t/clean": CLEAN}) as hub:
        env = _env(tmp_path, hub)
        assert run(tmp_path, env, "check", "t/clean", "--peft", PEFT).returncode == 0  # caches the config only
    # The Hub is gone: a refused connection, then HF_HUB_OFFLINE. The online check cached the config of the
    # commit it read (pinned by sha: no refs/main is written), never the weights.
    unreachable = run(tmp_path, env, "check", "t/clean", "--peft", PEFT)
    one_line(unreachable, "t/clean", "could not be read", "ConnectError", "not in the local Hugging Face cache",
             "hf download t/clean")
    sha = commit_sha("t/clean", CLEAN)
    offline = run(tmp_path, {**env, "HF_HUB_OFFLINE": "1"}, "check", f"t/clean@{sha}", "--peft", PEFT)
    one_line(offline, "HF_HUB_OFFLINE is set", "holds its adapter_config.json but not its weights",
             f"hf download t/clean --revision {sha}")
    never = run(tmp_path, {**env, "HF_HUB_OFFLINE": "1"}, "check", "t/never-seen", "--peft", PEFT)
    one_line(never, "t/never-seen", "not in the local Hugging Face cache")

    with serve_repos({"t/clean": CLEAN}) as hub:
        _download(tmp_path, {**env, "HF_ENDPOINT": hub}, "t/clean")  # what `hf download t/clean` does
    local = reports(run(tmp_path, env, "check", str(CLEAN), "--format", "json", "--peft", PEFT))[0]
    offline = run(tmp_path, {**env, "HF_HUB_OFFLINE": "1"}, "check", "t/clean", "--format", "json", "--peft", PEFT)
    assert offline.returncode == 0 and offline.stderr == "", offline.stderr  # asked for: nothing to say
    unreachable = run(tmp_path, env, "check", "t/clean", "--format", "json", "--peft", PEFT)
    assert unreachable.returncode == 0
    note = unreachable.stderr.splitlines()
    assert len(note) == 1 and "could not be read" in note[0] and "local cache" in note[0], unreachable.stderr
    for done in (offline, unreachable):
        got = reports(done)[0]
        assert got.pop("path") == "t/clean"
        local.pop("path", None)
        assert got == local


@pytest.mark.parametrize("token", [None, "hf_someoneElsesToken000", TOKEN], ids=["anonymous", "other-token", "token"])
def test_private_and_gated(tmp_path: Path, token: Optional[str]) -> None:
    with serve_repos({"t/private": CLEAN, "t/gated": CLEAN}, private={"t/private"}, gated={"t/gated"},
                     token=TOKEN) as hub:
        env = _env(tmp_path, hub, **({"HF_TOKEN": token} if token else {}))
        private = run(tmp_path, env, "check", "t/private", "--peft", PEFT)
        gated = run(tmp_path, env, "check", "t/gated", "--peft", PEFT)
    for done in (private, gated):
        assert TOKEN not in done.stdout + done.stderr and "hf_someoneElses" not in done.stdout + done.stderr
    if token == TOKEN:
        assert (private.returncode, gated.returncode) == (0, 0), (private.stderr, gated.stderr)
        return
    if token is None:
        one_line(private, "t/private", "not found on the Hub", "hf auth login")
        one_line(gated, "t/gated", "gated", "log in")
    else:
        one_line(private, "t/private", "private and the token in use cannot see it")
        one_line(gated, "t/gated", "gated", "not been granted access")


def test_slow_and_cut_off_answers(tmp_path: Path) -> None:
    with serve_repos({"t/slow": CLEAN, "t/cut": CLEAN}, delay={"t/slow": 20},
                     truncate={"t/cut/adapter_model.safetensors"}) as hub:
        env = _env(tmp_path, hub, HF_HUB_ETAG_TIMEOUT="1", HF_HUB_DOWNLOAD_TIMEOUT="1")
        slow = run(tmp_path, env, "check", "t/slow", "--peft", PEFT)
        cut = run(tmp_path, env, "check", "t/cut", "--peft", PEFT)
    one_line(slow, "t/slow", "did not answer in time", "not in the local Hugging Face cache")
    one_line(cut, "t/cut", "RemoteProtocolError")


def test_base_config_is_fetched_for_a_hub_adapter(tmp_path: Path) -> None:
    def base(name: str, tied: bool) -> Path:
        directory = tmp_path / "repos" / name
        directory.mkdir(parents=True)
        (directory / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": tied}))
        return directory

    tied = _adapter(tmp_path / "repos" / "tied", base_model_name_or_path="t/base-tied",
                    target_modules=["q_proj", "v_proj", "lm_head"])
    shutil.copy(CLEAN / "adapter_model.safetensors", tied)
    untied = _adapter(tmp_path / "repos" / "untied", config_from=tied, base_model_name_or_path="t/base-untied")
    shutil.copy(CLEAN / "adapter_model.safetensors", untied)
    log: list[tuple[str, str]] = []
    with serve_repos({"t/tied": tied, "t/untied": untied, "t/base-tied": base("bt", True),
                      "t/base-untied": base("bu", False)}, log=log) as hub:
        env = _env(tmp_path, hub)
        done = run(tmp_path, env, "check", "t/tied", "t/untied", "--format", "json", "--peft", PEFT)
        before_dir = len(log)
        local = run(tmp_path, {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}, "check", str(untied),
                    "--format", "json", "--peft", PEFT)
    codes = [{f["code"] for f in r["findings"]} for r in reports(done)]
    assert "PD115" in codes[0] and "PD115" not in codes[1], codes
    assert ("GET", "/t/base-untied/resolve/main/config.json") in log
    # `check DIR` never goes online for its base: with an empty cache it cannot know the base is untied.
    assert len(log) == before_dir
    assert "PD115" in {f["code"] for f in reports(local)[0]["findings"]}


def _author_repos(tmp: Path) -> dict[str, Path]:
    repos = {"org/a-clean": CLEAN, "org/b-broken": BROKEN, "org/c-clean": CLEAN, "other/clean": CLEAN}
    full = tmp / "full"
    full.mkdir()
    (full / "config.json").write_text('{"model_type": "llama"}')
    (full / "model.safetensors").write_bytes(b"\0" * 16)
    below = tmp / "below" / "checkpoint-1"
    shutil.copytree(CLEAN, below)
    return {**repos, "org/full-model": full, "org/nested": below.parent, "org/private": BROKEN}


def test_scan_hub(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    with serve_repos(_author_repos(tmp_path), log=log, private={"org/private"}, page_size=2) as hub:
        env = _env(tmp_path, hub)
        done = run(tmp_path, env, "scan", "--hub", "org", "--format", "json", "--peft", PEFT)
        text = run(tmp_path, env, "scan", "--hub", "org", "--peft", PEFT)
    assert done.returncode == 1, done.stderr  # the broken adapter has errors
    data = json.loads(done.stdout)
    # Listed through the API (three pages of two): adapters and the repo holding one below; not the full
    # model, not another author's repo, not the private one (no token).
    assert [r["path"] for r in data["reports"]] == ["org/a-clean", "org/b-broken", "org/c-clean", "org/nested"]
    assert data["unusable"] == []
    listing = [p for m, p in log if p.startswith("/api/models?")]
    assert len(listing) == 2 * 3 and all("author=org" in p and "expand=siblings" in p for p in listing), listing
    assert not any("/org/private/" in p or "/other/" in p for _, p in log)
    # The same reports and summary as a local scan of the same directories (plus the repo with one below).
    tree = tmp_path / "tree"
    for name, source in (("a", CLEAN), ("b", BROKEN), ("c", CLEAN)):
        shutil.copytree(source, tree / name)
    local = json.loads(run(tmp_path, env, "scan", str(tree), "--format", "json", "--peft", PEFT).stdout)
    hub_reports = {r["path"]: r for r in data["reports"]}
    for name, repo_id in (("a", "org/a-clean"), ("b", "org/b-broken"), ("c", "org/c-clean")):
        directory = str(tree / name)
        assert VALUES_NOT_READ in hub_reports[repo_id]["skipped"]  # the one difference: values need a local copy
        hub_reports[repo_id]["skipped"].remove(VALUES_NOT_READ)
        assert json.dumps(hub_reports[repo_id]) == json.dumps(next(
            r for r in local["reports"] if r["path"] == directory)).replace(directory, repo_id)
    assert hub_reports["org/nested"]["kind"] == "adapters-below"
    assert [s for s in data["summary"] if s["code"] != "PD005"] == local["summary"]
    assert data["adapters"] == local["adapters"] + 1
    assert "checked 4/4 repos" in done.stderr.splitlines()[-1]
    assert text.stdout.startswith("org (on the Hub): 4 adapter(s)"), text.stdout


def test_scan_from_file(tmp_path: Path) -> None:
    listing = tmp_path / "repos.txt"
    listing.write_text("# adapters we serve\norg/a-clean\norg/b-broken@main  # pinned\n\norg/missing\n")
    with serve_repos(_author_repos(tmp_path)) as hub:
        env = _env(tmp_path, hub)
        done = run(tmp_path, env, "scan", "--from-file", str(listing), "--format", "json", "--peft", PEFT)
        bad = tmp_path / "bad.txt"
        bad.write_text("org/a-clean\nnot a repo id\n")
        refused = run(tmp_path, env, "scan", "--from-file", str(bad), "--peft", PEFT)
        both = run(tmp_path, env, "scan", str(tmp_path), "--hub", "org", "--peft", PEFT)
        offline = run(tmp_path, {**env, "HF_HUB_OFFLINE": "1"}, "scan", "--hub", "org", "--peft", PEFT)
    data = json.loads(done.stdout)
    assert [r["path"] for r in data["reports"]] == ["org/a-clean", "org/b-broken@main"]
    assert [u["path"] for u in data["unusable"]] == ["org/missing"] and done.returncode == 1
    one_line(refused, f"{bad}:2", "not a repo id")
    one_line(both, "one of")
    one_line(offline, "--hub org", "HF_HUB_OFFLINE")


def test_bench_prints_the_throughput_figure(tmp_path: Path) -> None:
    """The figure itself is the bench's to judge (bench/hub_scan_speed.py; no timing assert here)."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "hub_scan_speed.py"), "--repos", "24"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    assert "scan --hub: 24 repos" in done.stdout and "repos/s (target >= 50)" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1] == ("PASS" if done.returncode == 0 else "MISS")


def test_check_dir_stays_light(tmp_path: Path) -> None:
    """`check DIR` imports neither huggingface_hub nor the Hub reader (a local base named by path)."""
    adapter = _adapter(tmp_path / "a", base_model_name_or_path=str(tmp_path / "no-such-base"))
    shutil.copy(CLEAN / "adapter_model.safetensors", adapter)
    code = ("import sys\nfrom peftdoctor.cli.app import main\nsys.argv = ['peftdoctor', 'check', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, sorted(m for m in sys.modules "
            "if m.startswith(('huggingface_hub', 'peftdoctor.io.hub'))))")
    done = subprocess.run([sys.executable, "-c", code, str(adapter)], capture_output=True, text=True,
                          env=_env(tmp_path, "http://127.0.0.1:9"), timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "0 []", (done.stdout, done.stderr)
