"""Describe a base model once: find it (a directory, the local hub cache), read config.json and the
shard index under the file rules (io/files.py), and return the frozen Base (model/base.py)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import MAX_JSON_BYTES, read_limited, require_safe
from peftdoctor.io.locate import resolve
from peftdoctor.model.base import INDEX_NAME, Base

# A repo id is "name" or "owner/name"; anything else is a path.
REPO_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


def open_base(name: str) -> Base:
    """The base at `name` (a directory, or a repo id in the local hub cache; never downloads), with its
    shard index. UnusableInput (one line) when it is missing, unreadable or breaks the file rules."""
    directory, display = resolve(name)
    require_safe(directory, display)
    config = _json(directory / "config.json", display, "not a transformers model")
    weight_map: dict[str, str] = {}
    if (directory / INDEX_NAME).is_file():
        index = _json(directory / INDEX_NAME, display, "the shard index is unreadable")
        weight_map = index.get("weight_map") if isinstance(index.get("weight_map"), dict) else None
        if weight_map is None or not all(isinstance(v, str) for v in weight_map.values()):
            raise UnusableInput(f"{display}: {INDEX_NAME} has no weight_map of file names")
        odd = next((n for n in weight_map.values() if Path(n).name != n or n in ("", ".", "..")), None)
        if odd is not None:
            raise UnusableInput(f"{display}: {INDEX_NAME} names the shard {odd!r} outside the model directory; "
                                "not read")
    origin = "directory" if Path(name).exists() else "hub-cache"
    return Base(display, config, directory, origin, tuple(sorted(os.listdir(directory))), weight_map)


def find_base_config(name: Any, online: bool = False) -> Optional[Base]:
    """The base's config.json alone, from a local directory or the local hub cache, if either has it;
    None otherwise (check's base-aware rules then say they were skipped). Never downloads, unless `online`:
    then a hub id's config.json (that file alone) is first fetched into the cache by huggingface_hub, with
    its token, endpoint and HF_HUB_OFFLINE rules (io/hub.py), and read from there like any cached one."""
    if not isinstance(name, str) or not name:
        return None
    local = Path(name)
    if (local / "config.json").is_file():
        config = _config_or_none(local / "config.json")
        return Base(name, config, local, "directory") if config is not None else None
    if not REPO_ID.match(name) or name.startswith(".") or not (online or _may_be_cached(name)):
        return None
    from huggingface_hub import try_to_load_from_cache  # only here: rare, and not free to import

    if online:
        from peftdoctor.io.hub import fetch_file

        fetch_file(name, "config.json")
    cached = try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
        return None
    config = _config_or_none(Path(cached))
    return Base(name, config, None, "hub-cache-config") if config is not None else None


def _may_be_cached(repo_id: str) -> bool:
    """False when the hub cache has no folder for this model repo: check then skips importing
    huggingface_hub (~0.3 s) for every adapter whose base was never downloaded. The same environment
    variables as huggingface_hub.constants.HF_HUB_CACHE; when in doubt, True."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    folder = os.path.join(os.path.expanduser(cache), "models--" + repo_id.replace("/", "--"))
    return os.path.isdir(folder)


def _config_or_none(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(read_limited(path, MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _json(path: Path, display: str, meaning: str) -> dict[str, Any]:
    try:
        data = json.loads(read_limited(path, MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        raise UnusableInput(f"{display}: {path.name} is missing or unreadable, {meaning} ({exc})") from None
    if not isinstance(data, dict):
        raise UnusableInput(f"{display}: {path.name} is not a JSON object, {meaning}")
    return data
