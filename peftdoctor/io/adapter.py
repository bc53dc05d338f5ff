"""Find what the user pointed at and read it: an adapter directory, its config and weight files.

Only files are read here; judging them is the job of the check modules.
"""
from __future__ import annotations

import json
import os
import re
import hashlib
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import FileRefused, read_limited, refused_entries
from peftdoctor.io.safetensors import Header, HeaderError, read_header
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter

__all__ = ["CONFIG_NAME", "PICKLE_NAME", "SAFETENSORS_NAME", "Adapter", "MAX_CONFIG_BYTES", "UnusableInput",
           "open_adapter", "read_config", "require_safe", "resolve"]

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # real configs are a few KB; refuse to slurp a mislabelled blob

# owner/name, the form huggingface_hub accepts for repo ids (validated again by it).
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")
_FULL_MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                       "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_MEDUSA_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


def resolve(target: str) -> tuple[Path, str]:
    """Turn a path, a path to adapter_config.json, or a cached hub repo id into a directory."""
    path = Path(target)
    if path.is_dir():
        return path, target
    if path.name == CONFIG_NAME and (path.is_file() or path.is_symlink()):
        return path.parent, target
    if path.exists():
        raise UnusableInput(f"{target}: not a directory or an {CONFIG_NAME}")
    if _REPO_ID.match(target) and not target.startswith("."):
        return _from_hub_cache(target), target
    raise UnusableInput(f"{target}: no such directory")


def _from_hub_cache(repo_id: str) -> Path:
    # Imported here: only repo ids need huggingface_hub, and `check DIR` should not pay for it.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        # local_files_only explicitly: HF_HUB_OFFLINE is read once at import and may not be set.
        return Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError as exc:
        raise UnusableInput(f"{repo_id}: not a directory, nor a valid repo id ({exc})") from None
    except (LocalEntryNotFoundError, OSError):
        raise UnusableInput(
            f"{repo_id}: no such directory, and that repo id is not in the local Hugging Face cache "
            f"(download it first: `hf download {repo_id}`)"
        ) from None


def open_adapter(target: str) -> Adapter:
    """Locate and read the adapter at `target` (directory, config file path, or repo id): its entries
    under the file rules, its config, and its safetensors header, each read exactly once."""
    directory, display = resolve(target)
    origin = "directory" if Path(target).exists() else "hub-cache"
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UnusableInput(f"{target}: cannot list directory: {exc.strerror}") from None
    refused = refused_entries(directory, names)
    weights = tuple(n for n in (SAFETENSORS_NAME, PICKLE_NAME) if n in names)
    found = dict(directory=directory, display=display, origin=origin, refused=refused, weight_files=weights)
    if CONFIG_NAME not in names:
        kind, nested = _what_else(directory, names, refused)
        return Adapter(kind=kind, nested=nested, **found)
    header, header_error = _read_header(directory, refused) if SAFETENSORS_NAME in weights else (None, None)
    found.update(header=header, header_error=header_error)
    if CONFIG_NAME in refused:
        return Adapter(kind="peft-adapter", config_error=refused[CONFIG_NAME], **found)
    config, text, digest, error = _read_config(directory / CONFIG_NAME)
    return Adapter(kind="peft-adapter", config=config, config_text=text, config_digest=digest, config_error=error,
                   **found)


def _read_header(directory: Path, refused: dict[str, str]) -> tuple[Optional[Header], Optional[str]]:
    if SAFETENSORS_NAME in refused:
        return None, refused[SAFETENSORS_NAME]
    try:
        return read_header(str(directory / SAFETENSORS_NAME)), None
    except HeaderError as exc:
        return None, str(exc)


def require_safe(directory: Path, display: str) -> None:
    """UnusableInput unless every entry of `directory` passes the file rules (io.files): merge and
    verify hand whole directories to code that reads whatever it finds (transformers, tokenizers)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UnusableInput(f"{display}: cannot list directory: {exc.strerror}") from None
    refused = refused_entries(directory, names)
    if refused:
        name, why = next(iter(refused.items()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise UnusableInput(f"{display}: {name} {why}{more}; replace it with the file itself "
                            f"(`peftdoctor check` lists them)")


def read_config(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """The parsed config, or None and a one-line reason. Unreadable files are unusable input."""
    config, _text, _digest, error = _read_config(path)
    return config, error


def _read_config(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str], Optional[str], Optional[str]]:
    """(config, text, sha256 of the bytes, None), or (None, text-or-None, digest-or-None, one-line reason)."""
    try:
        raw = read_limited(path, MAX_CONFIG_BYTES)
    except FileRefused as exc:
        return None, None, None, str(exc).replace(str(path) + " ", "", 1)
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, None, digest, "is not UTF-8 text"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, text, digest, f"is not valid JSON ({exc})"
    except RecursionError:
        return None, text, digest, "is nested too deeply to be an adapter config"
    if not isinstance(data, dict):
        return None, text, digest, f"is JSON but not an object (it is {type(data).__name__})"
    return data, text, digest, None


def _what_else(directory: Path, names: list[str], refused: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """Classify a directory without adapter_config.json, so the user hears what it is instead."""
    if not names:
        return "empty", ()
    if any(n in names for n in _MEDUSA_FILES) or ("config.json" not in refused and
                                                   _config_mentions(directory, "medusa_num_heads")):
        return "medusa", ()
    if "config.json" in names and any(n in names for n in _FULL_MODEL_WEIGHTS):
        return "full-model", ()
    nested = tuple(sorted(str(p.parent.relative_to(directory))
                          for p in directory.glob(f"*/{CONFIG_NAME}")))
    if nested:
        return "adapters-below", nested
    return "unknown", ()


def _config_mentions(directory: Path, key: str) -> bool:
    try:
        data = json.loads(read_limited(directory / "config.json", MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and key in data
