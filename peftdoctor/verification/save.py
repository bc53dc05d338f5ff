"""Save the merged model so that an interrupted save never leaves a directory that looks complete.

Everything is written into a hidden staging directory beside --out (same filesystem) and renamed
to --out only when the model, tokenizer and generation config are all in place; on any failure the
staging directory is removed. Nothing else is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import FileRefused, copy_inside
from peftdoctor.io.staging import staged, write_failure
from peftdoctor.model.base import Base


def save_merged(model: Any, tokenizer: Any, base: Base, out: Path) -> Path:
    """Raises WriteFailed (exit 2, the file named) when a write fails: a failed write is not a verdict."""
    from safetensors import SafetensorError  # what save_pretrained raises for a failed write (no filename)

    try:
        with staged(out, sync_files=True) as staging:  # renamed into place when complete, with the umask's modes
            try:
                _save(model, tokenizer, base, staging)
            except (OSError, SafetensorError) as exc:
                if isinstance(exc, FileRefused):
                    raise UnusableInput(f"{exc}; nothing was left at {out}") from None
                # safetensors' error names no file, and it removes the one it failed on.
                what = None if isinstance(exc, OSError) else "the weights (model*.safetensors)"
                raise write_failure(exc, out, what) from None
    except OSError as exc:  # making, syncing or renaming the staging directory
        raise write_failure(exc, out) from None
    return out


def _save(model: Any, tokenizer: Any, base: Base, staging: Path) -> None:
    # safetensors only: a merged model must not need pickle to load.
    model.save_pretrained(str(staging), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(staging))
    generation = base.directory / "generation_config.json"
    if generation.is_file() and not (staging / "generation_config.json").exists():
        copy_inside(generation, staging / "generation_config.json")

