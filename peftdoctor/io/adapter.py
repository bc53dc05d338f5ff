"""Find what the user pointed at and read it: an adapter directory, its config and weight files.

Only files are read here; judging them is the job of the check modules.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import FileRefused, read_limited, refused_entries
from peftdoctor.io.limits import config_excess

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # real configs are a few KB; refuse to slurp a mislabelled blob

# owner/name, the form huggingface_hub accepts for repo ids (validated again by it).
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")
_FULL_MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                       "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_MEDUSA_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


@dataclass(frozen=True)
class Adapter:
    """An adapter directory as found on disk, read but not judged."""

    directory: Path
    display: str  # what the user typed, for messages
    kind: str  # "peft-adapter", "empty", "full-model", "medusa", "adapters-below", "unknown"
    config: Optional[dict[str, Any]] = None
    config_error: Optional[str] = None  # why the config could not be used, one line
    refused: dict[str, str] = field(default_factory=dict)  # entries no command reads: name -> why (io.files)
    weight_files: tuple[str, ...] = ()
    nested: tuple[str, ...] = field(default=())  # adapter directories found below, for "adapters-below"

    def path_of(self, name: str) -> Path:
        return self.directory / name

    @property
    def escaping_links(self) -> tuple[str, ...]:
        return tuple(n for n, why in self.refused.items() if why.startswith("is a symlink"))

    def readable(self, name: str) -> bool:
        """Whether `name` is present and passes the file rules (io.files): never a link out, a fifo, a device."""
        return name in self.files and name not in self.refused

    @property
    def files(self) -> frozenset[str]:
        return frozenset(self.weight_files) | ({CONFIG_NAME} if self.kind == "peft-adapter" else frozenset())


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
    """Locate and read the adapter at `target` (directory, config file path, or repo id)."""
    directory, display = resolve(target)
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UnusableInput(f"{target}: cannot list directory: {exc.strerror}") from None
    refused = refused_entries(directory, names)
    weights = tuple(n for n in (SAFETENSORS_NAME, PICKLE_NAME) if n in names)
    if CONFIG_NAME not in names:
        kind, nested = _what_else(directory, names, refused)
        return Adapter(directory, display, kind, weight_files=weights, nested=nested, refused=refused)
    if CONFIG_NAME in refused:
        return Adapter(directory, display, "peft-adapter", refused=refused, weight_files=weights,
                       config_error=refused[CONFIG_NAME])
    config, error = read_config(directory / CONFIG_NAME)
    return Adapter(directory, display, "peft-adapter", config, error, refused, weights)


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
    try:
        raw = read_limited(path, MAX_CONFIG_BYTES)
    except FileRefused as exc:
        return None, str(exc).replace(str(path) + " ", "", 1)
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    except RecursionError:
        return None, "is nested too deeply to be an adapter config"
    if not isinstance(data, dict):
        return None, f"is JSON but not an object (it is {type(data).__name__})"
    excess = config_excess(data)
    if excess:
        return None, f"{excess}; not judged"
    return data, None


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
