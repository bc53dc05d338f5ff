"""`check OWNER/NAME` and `scan --hub` against a Hub that misbehaves (issue 20, the outside tester's cases).

The Hub is tests/hub_server.py with its `hostile` behaviours; the client is huggingface_hub's real code. Each
case first shows what a plain huggingface_hub call does with that answer (the file written outside the
cache, the hour of sleep, the gigabyte inflated onto disk), then that peftdoctor ends in one line, in bounded
time, with nothing left behind. Deadlines are shortened through the environment, never waited out.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.adapters import write_safetensors_header
from tests.hub_server import serve_repos
from tests.test_hub_online import CLEAN, PEFT, _env, one_line, reports, run

MAX_BODY = 16 * 1024 * 1024  # peftdoctor.io.hub_guard.MAX_BODY_BYTES, restated: the test pins the cap
SECRET = "s3cretPassw0rd"


def _with_password(endpoint: str) -> str:
    return endpoint.replace("http://", f"http://someone:{SECRET}@")


def _hf(tmp: Path, env: dict[str, str], code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """A few lines of plain huggingface_hub (no peftdoctor) in a child with `env`: what the library does alone."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=tmp)


def _in_flight_bytes() -> int:
    """The most bytes the kernel can hold between the server's writes and the client's reads on loopback: the
    largest send and receive buffers TCP autotunes to (tcp_wmem, tcp_rmem), 8 MiB each where /proc does not say.
    What the server wrote beyond the cap and these, the client read."""
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            total += 8 * 1024 * 1024
    return total


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("where", ["sha", "absolute-sha", "etag", "x-repo-commit"])
def test_commit_ids_and_etags_never_become_paths(tmp_path: Path, where: str) -> None:
    escape = str(tmp_path / "abs-escaped") if where == "absolute-sha" else "../../../escaped"
    hostile = {"sha": {"t/x": {"info": {"sha": escape}}}, "absolute-sha": {"t/x": {"info": {"sha": escape}}},
               "etag": {"t/x/adapter_config.json": {"etag": escape}},
               "x-repo-commit": {"t/x/adapter_config.json": {"commit": escape}}}[where]
    with serve_repos({"t/x": CLEAN}, hostile=hostile) as hub:
        env = _env(tmp_path, hub)
        # What huggingface_hub does with it alone: the revision the model info named, downloaded as told.
        alone = _hf(tmp_path, env, "from huggingface_hub import HfApi, hf_hub_download\n"
                    "sha = HfApi().model_info('t/x').sha\n"
                    "print(hf_hub_download('t/x', 'adapter_config.json', revision=sha))")
        escaped = [p for p in tmp_path.rglob("*escaped*")]
        if where == "x-repo-commit":  # huggingface_hub 2.4 refuses this one itself, with a ValueError
            assert "Invalid pointer path" in alone.stderr, alone.stderr[-2000:]
        else:
            assert alone.returncode == 0 and escaped, (alone.stderr[-2000:], escaped)  # written outside the cache
        for path in sorted(escaped, key=lambda p: -len(p.parts)):
            path.unlink() if path.is_file() else path.rmdir()
        done = run(tmp_path, _env(tmp_path / "second", hub), "check", "t/x", "--peft", PEFT)
    line = one_line(done, "t/x", "could not be read")
    assert ("commit" in line) if where != "etag" else ("ETag" in line), line
    assert not list(tmp_path.rglob("*escaped*"))


def test_a_revision_that_is_a_path_is_refused_before_any_request(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    listing = tmp_path / "repos.txt"
    listing.write_text("t/x\nt/x@/etc/passwd\n")
    with serve_repos({"t/x": CLEAN}, log=log) as hub:
        env = _env(tmp_path, hub)
        done = run(tmp_path, env, "check", "t/x@../../../escaped", "--peft", PEFT)
        scan = run(tmp_path, env, "scan", "--from-file", str(listing), "--peft", PEFT)
    one_line(done, "t/x@../../../escaped", "not a revision name")
    one_line(scan, f"{listing}:2", "not a revision name")
    assert log == []


def test_a_trickled_answer_ends_at_the_request_deadline(tmp_path: Path) -> None:
    # 2 s per byte; huggingface_hub's own read timeout (10 s) never fires, since a byte comes before it.
    with serve_repos({"t/info": CLEAN, "t/config": CLEAN}, hostile={
            "t/info": {"trickle": 2}, "t/config/adapter_config.json": {"trickle": 2}}) as hub:
        env = _env(tmp_path, hub, PEFTDOCTOR_HUB_REQUEST_TIMEOUT="1.5")
        started = time.monotonic()
        info = run(tmp_path, env, "check", "t/info", "--peft", PEFT, timeout=40)
        config = run(tmp_path, env, "check", "t/config", "--peft", PEFT, timeout=40)
        elapsed = time.monotonic() - started
        overall = run(tmp_path, _env(tmp_path, hub, PEFTDOCTOR_HUB_DEADLINE="1.5"), "check", "t/config",
                      "--peft", PEFT, timeout=40)
    for done in (info, config):
        one_line(done, "did not finish in time", "1.5 s (PEFTDOCTOR_HUB_REQUEST_TIMEOUT)")
    one_line(overall, "t/config", "did not finish in time", "PEFTDOCTOR_HUB_DEADLINE")
    assert elapsed < 25, elapsed
    assert not [p for p in _files(tmp_path / "cache") if p.name.endswith(".incomplete")]


def test_a_long_retry_after_is_not_slept(tmp_path: Path) -> None:
    with serve_repos({"t/x": CLEAN}, hostile={"t/x/adapter_config.json": {"retry_after": 3600}}) as hub:
        env = _env(tmp_path, hub)
        # huggingface_hub alone sleeps the hour (Retry-After + 1 s) before its retry: still asleep after 5 s.
        with pytest.raises(subprocess.TimeoutExpired):
            _hf(tmp_path, env, "from huggingface_hub import hf_hub_download\n"
                               "hf_hub_download('t/x', 'adapter_config.json')", timeout=5)
        started = time.monotonic()
        done = run(tmp_path, env, "check", "t/x", "--peft", PEFT, timeout=60)
    one_line(done, "t/x", "asks to wait 3600 s", "at most 10 s")
    assert time.monotonic() - started < 20


def test_a_listing_that_links_to_itself_ends(tmp_path: Path) -> None:
    repos = {"org/a": CLEAN, "org/b": CLEAN, "org/c": CLEAN}
    with serve_repos(repos, page_size=2, hostile={"listing": {"self_link": True}}) as hub:
        env = _env(tmp_path, hub)
        done = run(tmp_path, env, "scan", "--hub", "org", "--format", "json", "--peft", PEFT, timeout=60)
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert [r["path"] for r in data["reports"]] == ["org/a", "org/b"]  # the first page, checked once
    assert data["unusable"] == [{"path": "org (listing)", "reason": "the rest of the author's repos could not be "
                                 "read: the Hub's listing links back to a page already read"}]


def test_an_odd_listing_entry_is_that_repos_line(tmp_path: Path) -> None:
    repos = {"org/a": CLEAN, "org/odd": CLEAN, "org/z": CLEAN}
    with serve_repos(repos, hostile={"org/odd": {"info": {"siblings": 5}}}) as hub:
        done = run(tmp_path, _env(tmp_path, hub), "scan", "--hub", "org", "--format", "json", "--peft", PEFT)
    assert done.returncode == 1 and "internal error" not in done.stderr, done.stderr
    data = json.loads(done.stdout)
    assert [r["path"] for r in data["reports"]] == ["org/a", "org/z"]
    assert data["unusable"] == [{"path": "org/odd", "reason": "org/odd: could not be read: the Hub's answer lists its "
                                 "files or tags as something else than a list"}]


@pytest.mark.parametrize("how", ["endless", "gzip"])
def test_a_huge_config_is_cut_while_it_streams(tmp_path: Path, how: str) -> None:
    in_flight = _in_flight_bytes()
    size = MAX_BODY + in_flight + 8 * 1024 * 1024  # more than the cap and the kernel's buffers; no Content-Length
    served: Counter = Counter()
    with serve_repos({"t/huge": CLEAN}, served=served, hostile={"t/huge/adapter_config.json": {how: size}}) as hub:
        env = _env(tmp_path, hub)
        alone = _hf(tmp_path, env, "import os\nfrom huggingface_hub import hf_hub_download\n"
                                   "print(os.path.getsize(hf_hub_download('t/huge', 'adapter_config.json')))")
        assert alone.returncode == 0 and int(alone.stdout) == size  # huggingface_hub alone: all of it, on disk
        before = served["t/huge/adapter_config.json"]
        done = run(tmp_path, _env(tmp_path / "second", hub), "check", "t/huge", "--peft", PEFT)
        served["t/huge/adapter_config.json"] -= before
    line = one_line(done, "t/huge", "could not be read")
    assert (f"more than the {MAX_BODY} bytes" if how == "endless" else "'gzip'-encoded") in line, line
    cache = _files(tmp_path / "second" / "cache")
    assert not [p for p in cache if "blobs" in p.parts or p.name.endswith(".incomplete")], cache
    if how == "endless":
        # the rest was never read: what the server wrote is the cap, what sat in socket buffers, one 64 KiB write
        assert served["t/huge/adapter_config.json"] <= MAX_BODY + in_flight + (1 << 16) < size


# Answers that are not what the Hub's API gives, one repo each.
ODD = {"t/not-json": {"info_body": b"<html>Service Unavailable</html>"},
       "t/odd-siblings": {"info": {"siblings": 5}}, "t/odd-sha": {"info": {"sha": 12}},
       "t/redirect-loop/adapter_config.json": {"redirect_loop": True},
       "t/bad-commit/adapter_config.json": {"commit": "not-a-commit"}}


def test_odd_answers_are_one_line_and_one_repo(tmp_path: Path) -> None:
    odd = sorted({key.split("/adapter_config.json")[0] for key in ODD})
    listing = tmp_path / "repos.txt"
    listing.write_text("\n".join(["t/clean", *odd]) + "\n")
    with serve_repos({"t/clean": CLEAN, **{name: CLEAN for name in odd}}, hostile=ODD) as hub:
        env = _env(tmp_path, _with_password(hub))
        each = {name: run(tmp_path, env, "check", name, "--peft", PEFT) for name in odd}
        scan = run(tmp_path, env, "scan", "--from-file", str(listing), "--format", "json", "--peft", PEFT)
    for name, done in each.items():
        line = one_line(done, name, "could not be read")
        assert "internal error" not in line and SECRET not in line, line
    assert scan.returncode == 1 and SECRET not in scan.stdout + scan.stderr, scan.stderr
    data = json.loads(scan.stdout)
    assert [r["path"] for r in data["reports"]] == ["t/clean"]
    assert [u["path"] for u in data["unusable"]] == odd
    assert not any("internal error" in u["reason"] for u in data["unusable"]), data["unusable"]


def test_the_password_of_hf_endpoint_is_never_printed(tmp_path: Path) -> None:
    """huggingface_hub's own retry warnings name the URL, password included; peftdoctor's output never does."""
    hostile = {"t/x/adapter_config.json": {"retry_after": 0}, "t/loop/adapter_config.json": {"redirect_loop": True}}
    with serve_repos({"t/x": CLEAN, "t/loop": CLEAN}, hostile=hostile) as hub:
        env = _env(tmp_path, _with_password(hub))
        alone = _hf(tmp_path, env, "from huggingface_hub import hf_hub_download\n"
                                   "hf_hub_download('t/loop', 'adapter_config.json')")
        assert SECRET in alone.stderr  # the redirect loop's error text holds the URL
        retried = run(tmp_path, env, "check", "t/x", "--peft", PEFT, timeout=60)
        looped = run(tmp_path, env, "check", "t/loop", "--peft", PEFT)
    assert retried.returncode == 2 and "HTTP 429" in retried.stderr, retried.stderr
    assert "http://***@127.0.0.1" in retried.stderr  # huggingface_hub's retry warnings, the password taken out
    for done in (retried, looped):
        assert SECRET not in done.stdout + done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr


def test_ctrl_c_ends_a_hub_scan_at_once(tmp_path: Path) -> None:
    names = [f"t/slow-{i}" for i in range(6)]
    listing = tmp_path / "repos.txt"
    listing.write_text("\n".join(names) + "\n")
    log: list[tuple[str, str]] = []
    with serve_repos({name: CLEAN for name in names}, delay={name: 30 for name in names}, log=log) as hub:
        env = _env(tmp_path, hub, HF_HUB_ETAG_TIMEOUT="60")
        (tmp_path / "work").mkdir()
        child = subprocess.Popen([sys.executable, "-m", "peftdoctor", "scan", "--from-file", str(listing),
                                  "--peft", PEFT], cwd=tmp_path / "work", env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while len(log) < len(names) and time.monotonic() < deadline:  # every check is waiting on the Hub
                time.sleep(0.05)
            assert len(log) == len(names), log
            child.send_signal(signal.SIGINT)
            sent = time.monotonic()
            out, err = child.communicate(timeout=40)
            took = time.monotonic() - sent
        finally:
            child.kill()
    assert child.returncode == 130 and err.strip().splitlines()[-1] == "peftdoctor: interrupted", err
    assert took < 5, took  # not the 30 s the checks in flight would have waited


def test_an_mlx_lm_adapter_on_the_hub_is_named_as_locally(tmp_path: Path) -> None:
    mlx = tmp_path / "mlx"
    mlx.mkdir()
    # What mlx_lm.lora writes (as in test_values.py): its training arguments, adapters.safetensors.
    (mlx / "adapter_config.json").write_text(json.dumps({
        "adapter_path": "adapters", "fine_tune_type": "lora", "lora_parameters": {"keys": ["self_attn.q_proj"],
                                                                                   "rank": 8, "scale": 20.0},
        "model": "mlx-community/Llama-3.2-1B-Instruct-4bit", "num_layers": 16}))
    write_safetensors_header(mlx / "adapters.safetensors", {"model.layers.15.self_attn.q_proj.lora_a": ("F32", (8, 8))})
    with serve_repos({"t/mlx": mlx}) as hub:
        env = _env(tmp_path, hub)
        online = run(tmp_path, env, "check", "t/mlx", "--format", "json", "--peft", PEFT)
        local = run(tmp_path, env, "check", str(mlx), "--format", "json", "--peft", PEFT)
    hub_report, dir_report = reports(online)[0], reports(local)[0]
    assert online.returncode == local.returncode == 2
    assert hub_report["kind"] == dir_report["kind"] == "mlx-lm"
    assert [f["code"] for f in hub_report["findings"]] == [f["code"] for f in dir_report["findings"]] == ["PD009"]


def test_requests_outside_a_scope_are_left_alone() -> None:
    """Importing peftdoctor's Hub reader changes nothing for a program's own huggingface_hub requests."""
    code = ("from peftdoctor.io import hub\nfrom huggingface_hub.utils import get_session\n"
            "client = get_session()\nrequest = client.build_request('GET', 'http://127.0.0.1:9/x')\n"
            "before = request.headers.get('Accept-Encoding')\n"
            "[hook(request) for hook in client.event_hooks['request']]\n"
            "print(len(client.event_hooks['request']), request.headers.get('Accept-Encoding') == before,\n"
            "      'peftdoctor_deadline' in request.extensions)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert done.stdout.split() == ["2", "True", "False"], (done.stdout, done.stderr)


def test_the_listing_is_read_as_the_threads_take_repos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory does not follow the listing: a scan pulls repos from it only as its threads take them (before,
    the whole listing was a list first, its length needed up front). The check itself is replaced by a
    recorder here: what is under test is the pool's appetite, not a diagnosis."""
    from peftdoctor.ops import hub_scan

    pulled, finished, ahead = [0], [0], []

    def listing():
        for i in range(2000):
            pulled[0] += 1
            ahead.append(pulled[0] - finished[0])
            yield f"t/repo-{i}"

    def one(repo, peft, shared):  # noqa: ANN001, ANN202 - hub_scan._check_one's signature
        return repo, None, f"{repo}: recorded", None

    def progress(done, total, ref, note):  # noqa: ANN001, ANN202
        finished[0] = done

    monkeypatch.setattr(hub_scan, "_check_one", one)
    result = hub_scan.scan_repos("t", listing(), PEFT, workers=4, progress=progress)
    assert len(result.unusable) == 2000 and finished[0] == 2000
    assert max(ahead) <= 4 + 2 * 4 + 2, max(ahead)  # the threads' repos and the queue's, never the listing


def test_scan_hub_checks_while_it_lists(tmp_path: Path) -> None:
    """The listing is read a page at a time as the threads take repos: checks start before its last page is
    asked for (before, every page was read into memory first: 300-424 MB for 100k repos)."""
    log: list[tuple[str, str]] = []
    with serve_repos({f"org/a-{i:03d}": CLEAN for i in range(120)}, page_size=5, log=log) as hub:
        done = run(tmp_path, _env(tmp_path, hub), "scan", "--hub", "org", "--peft", PEFT)
    assert done.returncode == 0 and done.stdout.startswith("org (on the Hub): 120 adapter(s), 120 clean"), done.stdout
    pages = [i for i, (_, path) in enumerate(log) if path.startswith("/api/models?")]
    first_check = next(i for i, (_, path) in enumerate(log) if "/resolve/" in path)
    assert len(pages) == 24 and first_check < pages[-1], (len(pages), first_check, pages[-1])


def test_a_snapshot_a_cut_off_download_left_is_not_an_empty_repo(tmp_path: Path) -> None:
    """A download cut off after huggingface_hub wrote refs/main and created the snapshot folder (a hostile Hub
    refused mid-way, a killed run) leaves an empty folder: the cache fallback says what it lacks instead of
    calling the repo empty (PD001)."""
    sha = "0" * 40
    repo = tmp_path / "cache" / "models--t--x"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    done = run(tmp_path, _env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1"), "check", "t/x", "--peft", PEFT)
    one_line(done, "t/x", "holds no adapter_config.json of it", "hf download t/x")
