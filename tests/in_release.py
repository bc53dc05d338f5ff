"""Run the scripts of tests/era/ under a peft release: the installed one ("installed") or an old release in
its side-by-side environment (scripts/peft_envs.py), one process per release (importing peft is slow)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
ERA = Path(__file__).resolve().parent / "era"
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
import peft_envs  # noqa: E402

INSTALLED = "installed"


def run_in(release: str, script: str, *args: str, timeout: float = 300) -> str:
    """stdout of tests/era/`script` run with `args` under `release` (its env made when missing)."""
    if release == INSTALLED:
        argv, env = [sys.executable], None
    else:
        peft_envs.ensure_env(release)
        argv, env = peft_envs.env_python_cmd(release)
    done = subprocess.run([*argv, str(ERA / script), *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, f"peft {release}, {script}: {done.stderr[-3000:]}"
    return done.stdout


def version_of(release: str) -> str:
    """The peft version `release` stands for ("installed": the one in this environment)."""
    from peftdoctor.peft.releases import installed_peft

    return installed_peft() if release == INSTALLED else release


def outcomes(releases: list[str], script: str, directories: Any) -> dict[str, Any]:
    """{release: the script's answer on `directories`}, one process per release."""
    return {release: answer_of(release, script, *map(str, directories)) for release in releases}


def answer_of(release: str, script: str, *args: str, timeout: float = 300) -> Any:
    """The JSON the script prints on its last line."""
    return json.loads(run_in(release, script, *args, timeout=timeout).strip().splitlines()[-1])


def written_by_releases(out: Mapping[str, Path], jobs: Mapping[str, tuple[str, str, dict[str, Any]]]) -> None:
    """Save each config {name: (writer release, config class, kwargs)} into out[name] with the writer's own
    save_pretrained (tests/era/save_config.py), one process per writer."""
    for writer in sorted({w for w, _, _ in jobs.values()}):
        batch = [[str(out[n]), cls, kwargs] for n, (w, cls, kwargs) in jobs.items() if w == writer]
        run_in(writer, "save_config.py", json.dumps(batch))


def installed_catalogued_peft() -> tuple[Path, str, list[str]]:
    """(the installed peft's package folder, its release, the catalogue's peft releases); skips the test when
    the installed release is not catalogued (a dev install)."""
    import importlib.util

    import pytest

    from peftdoctor.messages import catalogue
    from peftdoctor.peft import releases

    spec = importlib.util.find_spec("peft")
    assert spec is not None and spec.submodule_search_locations
    version = releases.installed_peft()
    order = catalogue.load()["releases"]["peft"]
    if version not in order:
        pytest.skip(f"installed peft {version} is not a catalogued release")
    return Path(list(spec.submodule_search_locations)[0]), version, order
