"""Save the merged model so that an interrupted save never leaves a directory that looks complete.

Everything is written into a hidden staging directory beside --out (same filesystem) and renamed
to --out only when the model, tokenizer and generation config are all in place; on any failure the
staging directory is removed. Nothing else is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import copy_inside
from peftdoctor.io.staging import staged
from peftdoctor.model.base import Base


def check_out(out: Optional[str]) -> Optional[Path]:
    """Refuse an --out that holds something (we would overwrite it) before any work is done."""
    if out is None:
        return None
    path = Path(out)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UnusableInput(f"--out {out}: exists and is not a directory; nothing written")
    if path.is_dir() and any(path.iterdir()):
        raise UnusableInput(f"--out {out}: directory is not empty; nothing written")
    if not path.parent.is_dir():
        raise UnusableInput(f"--out {out}: parent directory {path.parent} does not exist")
    return path


def save_merged(model: Any, tokenizer: Any, base: Base, out: Path) -> Path:
    with staged(out, sync_files=True) as staging:  # renamed into place when complete, with the umask's modes
        # safetensors only: a merged model must not need pickle to load.
        model.save_pretrained(str(staging), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        generation = base.directory / "generation_config.json"
        if generation.is_file() and not (staging / "generation_config.json").exists():
            copy_inside(generation, staging / "generation_config.json")
    return out
