"""Merged models are readable by whoever the umask lets read them: a directory made by merge or by
verify --out gets 0777 & ~umask like any mkdir (not mkdtemp's 0700), each file 0666 & ~umask."""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import adapters as A

pytest.importorskip("torch")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
MERGE = """
import os, sys
os.umask(int(sys.argv[1], 8))
from peftdoctor.merge import stream_merge
stream_merge(sys.argv[2], sys.argv[3], sys.argv[4])
"""
SAVE = """
import os, sys
from pathlib import Path
os.umask(int(sys.argv[1], 8))
from tests import adapters as A
from peftdoctor.io.base import open_base
from peftdoctor.verification.save import save_merged
save_merged(A.load_base(sys.argv[3]), None, open_base(sys.argv[3]), Path(sys.argv[4]))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("modes")
    base = A.make_llama_base(root / "base")
    return base, A.make_lora_adapter(root / "adapter", base)


def _modes(directory: Path) -> set[tuple[str, int]]:
    found = {("dir", stat.S_IMODE(directory.stat().st_mode))}
    for path in directory.rglob("*"):
        found.add(("dir" if path.is_dir() else "file", stat.S_IMODE(path.stat().st_mode)))
    return found


@pytest.mark.parametrize("umask, directory, file", [("022", 0o755, 0o644), ("077", 0o700, 0o600),
                                                    ("002", 0o775, 0o664)])
@pytest.mark.parametrize("script", ["merge", "verify-save"])
def test_output_follows_the_umask(script: str, umask: str, directory: int, file: int, made: tuple[Path, Path],
                                  tmp_path: Path) -> None:
    base, adapter = made
    out = tmp_path / "out"
    code = MERGE if script == "merge" else SAVE
    subprocess.run([sys.executable, "-c", code, umask, str(adapter), str(base), str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert _modes(out) == {("dir", directory), ("file", file)}
