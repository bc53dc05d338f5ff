"""The hooks in .pre-commit-hooks.yaml, end to end: real git, real pre-commit, a real commit.

pre-commit installs this project into its own hook environment from a snapshot of the working
tree (pre-commit clones a repository at a revision, so the snapshot is committed in a scratch
repository first). That install is the light one a user gets: no torch, no peft.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def hooks_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This project's working tree, committed in a scratch repository: (path, revision)."""
    snap = tmp_path_factory.mktemp("peftdoctor-snapshot")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (snap / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, snap / name)
    git(snap, "init", "-q")
    git(snap, "add", "-A")
    assert git(snap, "commit", "-qm", "snapshot").returncode == 0
    return snap, git(snap, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture()
def adapter_repo(tmp_path: Path, hooks_repo: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path / "adapters"
    repo.mkdir()
    git(repo, "init", "-q")
    config = {"repos": [{"repo": str(hooks_repo[0]), "rev": hooks_repo[1], "hooks": [
        {"id": "peftdoctor-fix", "args": ["--peft", "0.13.2"]},
        {"id": "peftdoctor-check", "args": ["--peft", "0.13.2"]}]}]}
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
    return repo


def pre_commit_env(cache: Path) -> dict[str, str]:
    return dict(os.environ, PRE_COMMIT_HOME=str(cache), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")  # one hook environment for all tests here


def commit(repo: Path, cache: Path) -> subprocess.CompletedProcess:
    pre_commit = [sys.executable, "-m", "pre_commit"]
    subprocess.run([*pre_commit, "install"], cwd=repo, env=pre_commit_env(cache), check=True, capture_output=True)
    git(repo, "add", "-A")
    return subprocess.run(["git", "commit", "-qm", "adapter"], cwd=repo, env=pre_commit_env(cache),
                          capture_output=True, text=True, timeout=900)


def test_hooks_file_names_both_hooks() -> None:
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"peftdoctor-check", "peftdoctor-fix"}
    for hook in hooks.values():
        assert hook["entry"].split()[0] == "peftdoctor"
        files = re.compile(hook["files"])
        for name in ("adapter_config.json", "a/b/adapter_config.json", "x/adapter_model.safetensors",
                     "adapter_model.bin"):
            assert files.search(name), name
        for name in ("config.json", "model.safetensors", "adapter_config.json.orig", "my_adapter_model.bin"):
            assert not files.search(name), name


def test_clean_adapter_commits(adapter_repo: Path, cache: Path) -> None:
    shutil.copytree(FIXTURES / "tiny-llama-lora", adapter_repo / "adapter")
    # Written by peft 0.21.2, so first make it right for 0.13.2 the way the fix hook would.
    subprocess.run([sys.executable, "-m", "peftdoctor", "fix", str(adapter_repo / "adapter"), "--peft", "0.13.2",
                    "--backup-suffix", ""], check=True, capture_output=True)
    done = commit(adapter_repo, cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert git(adapter_repo, "log", "--oneline").stdout.count("\n") == 1


def test_fix_hook_rewrites_then_commit_passes(adapter_repo: Path, cache: Path) -> None:
    shutil.copytree(FIXTURES / "tiny-llama-lora", adapter_repo / "adapter")
    first = commit(adapter_repo, cache)
    assert first.returncode != 0  # the fix hook changed the file: pre-commit stops the commit
    assert "files were modified by this hook" in first.stdout + first.stderr
    config = json.loads((adapter_repo / "adapter" / "adapter_config.json").read_text())
    assert "peft_version" not in config and "use_qalora" not in config
    assert not (adapter_repo / "adapter" / "adapter_config.json.orig").exists()
    second = commit(adapter_repo, cache)
    assert second.returncode == 0, second.stdout + second.stderr


def test_bad_adapter_fails_the_commit_with_the_finding(adapter_repo: Path, cache: Path) -> None:
    shutil.copytree(FIXTURES / "broken-adapter", adapter_repo / "adapter")
    done = commit(adapter_repo, cache)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "PD206" in out  # rank mismatch: no rewrite can fix weights
    assert git(adapter_repo, "log", "--oneline").returncode != 0  # nothing was committed


def test_a_commit_that_changes_only_the_weights_runs_the_hooks(adapter_repo: Path, cache: Path) -> None:
    shutil.copytree(FIXTURES / "tiny-llama-lora", adapter_repo / "adapter")
    subprocess.run([sys.executable, "-m", "peftdoctor", "fix", str(adapter_repo / "adapter"), "--peft", "0.13.2",
                    "--backup-suffix", ""], check=True, capture_output=True)
    assert commit(adapter_repo, cache).returncode == 0
    # Weights trained with DoRA under a config that says plain LoRA: only adapter_model.safetensors changes.
    shutil.copy(FIXTURES / "broken-adapter" / "adapter_model.safetensors", adapter_repo / "adapter")
    assert git(adapter_repo, "status", "--porcelain").stdout.split() == ["M", "adapter/adapter_model.safetensors"]
    done = commit(adapter_repo, cache)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "PD210" in out, out
    assert git(adapter_repo, "log", "--oneline").stdout.count("\n") == 1  # the bad weights were not committed


def test_docs_snippet_uses_the_hooks_and_a_rev_that_can_exist() -> None:
    page = (ROOT / "docs" / "pre-commit.md").read_text()
    snippet = page.split("```yaml", 1)[1].split("```", 1)[0]
    repo = yaml.safe_load(snippet)["repos"][0]
    hooks = {h["id"] for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert {h["id"] for h in repo["hooks"]} <= hooks
    tags = subprocess.run(["git", "tag", "--list"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    # A tag only if this repository has it (v0.1.0 never existed); otherwise a commit sha's form.
    assert str(repo["rev"]) in tags or re.fullmatch(r"[0-9a-f]{40}", str(repo["rev"])), repo["rev"]
