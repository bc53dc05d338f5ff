"""`check OWNER/NAME` reads the repo from huggingface_hub's local cache when the Hub cannot give it.

The cache is not faked: huggingface_hub's own `snapshot_download` fills it, in a subprocess, from a fake Hub
served on 127.0.0.1 (tests/hub_server.py). That server is stopped before any check runs. huggingface_hub reads
HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported, so every run is a subprocess with its environment set.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.hub_server import commit_sha, serve_repos

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "tiny-llama-lora"
REPO_ID = "peftdoctor-tests/tiny-llama-lora"
PEFT = "0.21.2"

_DOWNLOAD = """\
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], endpoint=sys.argv[2], cache_dir=sys.argv[3]))
"""
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class HubCache:
    cache: Path  # the HF_HUB_CACHE directory
    home: Path  # HF_HOME: no token, no config from the user running the tests
    work: Path  # an empty working directory, so repo ids never collide with relative paths
    adapter: Path  # the directory that was served, for the direct check
    snapshot: Path  # what snapshot_download returned
    sha: str
    requests: tuple[tuple[str, str], ...]  # what the fake hub was asked while populating the cache


def base_env(hub: HubCache, **extra: str) -> dict[str, str]:
    """The caller's environment without any HF_* or proxy setting, pointed at the test cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("HF_") and k.upper() not in _PROXY_VARS}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HOME=str(hub.home), HF_HUB_CACHE=str(hub.cache), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.update(extra)
    return env


def peftdoctor(hub: HubCache, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True,
                          cwd=hub.work, env=env, timeout=60)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> HubCache:
    tmp = tmp_path_factory.mktemp("hub-cache")
    adapter = tmp / "served" / "tiny-llama-lora"
    shutil.copytree(FIXTURE, adapter)
    cache, home, work = tmp / "hf-cache", tmp / "hf-home", tmp / "work"
    for d in (home, work):
        d.mkdir()
    partial = HubCache(cache, home, work, adapter, Path(), "", ())
    env = base_env(partial, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")

    log: list[tuple[str, str]] = []
    with serve_repos({REPO_ID: adapter}, log=log, lifetime=60) as endpoint:
        # HF_ENDPOINT too: anything huggingface_hub fetches from its default endpoint stays on loopback.
        done = subprocess.run([sys.executable, "-c", _DOWNLOAD, REPO_ID, endpoint, str(cache)],
                              capture_output=True, text=True, cwd=work, env={**env, "HF_ENDPOINT": endpoint},
                              timeout=60)
    assert done.returncode == 0, f"snapshot_download failed:\n{done.stderr}"

    # The server is stopped: nothing listens on its port any more.
    url = urlsplit(endpoint)
    with pytest.raises(OSError):
        socket.create_connection((url.hostname, url.port), timeout=2).close()

    return HubCache(cache, home, work, adapter, Path(done.stdout.strip()), commit_sha(REPO_ID, adapter), tuple(log))


def check_json(hub: HubCache, env: dict[str, str], target: str) -> tuple[int, dict, str]:
    done = peftdoctor(hub, env, "check", target, "--format", "json", "--peft", PEFT)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"check {target}: exit {done.returncode}, no JSON on stdout\n"
                    f"stdout: {done.stdout!r}\nstderr: {done.stderr!r}")
    return done.returncode, data, done.stderr


def assert_same_as_directory_check(hub: HubCache, env: dict[str, str]) -> str:
    """...and return its stderr (empty unless the Hub was asked and could not give the repo)."""
    rc_dir, direct, _ = check_json(hub, env, str(hub.adapter))
    rc_hub, cached, stderr = check_json(hub, env, REPO_ID)
    assert rc_dir == 0, f"the fixture itself should check clean: {direct['findings']}"
    assert (rc_hub, cached["kind"], cached["findings"]) == (0, "peft-adapter", direct["findings"]), (
        f"`check {REPO_ID}` from the hub cache exited {rc_hub} with findings {cached['findings']} "
        f"(skipped: {cached.get('skipped')}); the same files checked as a directory give {direct['findings']}"
    )
    assert cached["compatibility"] == direct["compatibility"]
    assert cached["path"] == REPO_ID
    assert {k: v for k, v in cached.items() if k != "path"} == {k: v for k, v in direct.items() if k != "path"}
    return stderr


def test_cache_was_filled_by_huggingface_hub(hub: HubCache) -> None:
    repo_dir = hub.cache / f"models--{REPO_ID.replace('/', '--')}"
    assert hub.snapshot == repo_dir / "snapshots" / hub.sha
    assert (repo_dir / "refs" / "main").read_text() == hub.sha
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        cached = hub.snapshot / name
        assert cached.read_bytes() == (FIXTURE / name).read_bytes()
        # The real cache layout: snapshot entries are links into blobs/, named by ETag.
        assert cached.resolve().parent == (repo_dir / "blobs").resolve()
    tree = json.loads((repo_dir / "trees" / f"{hub.sha}.json").read_text())
    assert sorted(tree["files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not any("xet_hash" in entry for entry in tree["files"].values())
    # Exactly the plain-HTTP path: model info, tree listing, then HEAD + GET /resolve per file; no Xet.
    paths = {(m, p.split("?")[0]) for m, p in hub.requests}
    files = ("adapter_config.json", "adapter_model.safetensors")
    assert paths == {
        ("GET", f"/api/models/{REPO_ID}/revision/main"),
        ("GET", f"/api/models/{REPO_ID}/tree/{hub.sha}"),
        *((method, f"/{REPO_ID}/resolve/{hub.sha}/{f}") for f in files for method in ("HEAD", "GET")),
    }


def test_repo_id_checks_offline_like_the_directory(hub: HubCache) -> None:
    """HF_HUB_OFFLINE=1: the cache alone, and nothing said about it (the user asked for offline)."""
    assert assert_same_as_directory_check(hub, base_env(hub, HF_HUB_OFFLINE="1")) == ""


def test_repo_id_unknown_to_the_hub_is_read_from_the_cache(hub: HubCache) -> None:
    """HF_HUB_OFFLINE unset: the Hub is asked first (tests/test_hub_online.py); one that does not know the repo
    is asked nothing more, the cached copy is checked, and one stderr line says why."""
    trips: list[tuple[str, str]] = []
    with serve_repos({}, log=trips, lifetime=60) as tripwire:
        proxies = {name: tripwire for var in _PROXY_VARS[:3] for name in (var, var.lower())}
        stderr = assert_same_as_directory_check(hub, base_env(hub, HF_ENDPOINT=tripwire, **proxies))
    assert [(m, urlsplit(p).path) for m, p in trips] == [("GET", f"/api/models/{REPO_ID}")], trips
    lines = stderr.splitlines()
    assert len(lines) == 1 and "not found on the Hub" in lines[0] and "local cache" in lines[0], stderr
    assert hub.sha[:12] in lines[0]


@pytest.mark.parametrize("offline", ["1", None], ids=["HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE-unset"])
def test_repo_id_not_in_cache(hub: HubCache, offline: str | None) -> None:
    trips: list[tuple[str, str]] = []
    with serve_repos({}, log=trips, lifetime=60) as tripwire:
        env = base_env(hub, HF_ENDPOINT=tripwire, **({"HF_HUB_OFFLINE": offline} if offline else {}))
        done = peftdoctor(hub, env, "check", "peftdoctor-tests/not-downloaded", "--peft", PEFT)
    # Offline: not a request. Online: the Hub is asked for the repo's info, and nothing else.
    assert [p for _, p in trips] == ([] if offline else ["/api/models/peftdoctor-tests/not-downloaded"])
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "peftdoctor-tests/not-downloaded" in lines[0] and "cache" in lines[0], lines[0]


@pytest.mark.parametrize("target", ["a/b/c", "bad--owner/name"])
def test_invalid_repo_id(hub: HubCache, target: str) -> None:
    assert not (hub.work / target).exists()
    done = peftdoctor(hub, base_env(hub, HF_HUB_OFFLINE="1"), "check", target, "--peft", PEFT)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert target in lines[0]
