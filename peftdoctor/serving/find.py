"""The adapter a client asked for by name: a directory under one the operator configured, or a Hub repo.

A name comes from a request (vLLM's `model` field, SGLang's `lora_path`), so it is untrusted: it may be
"team/adapter" but never leaves the directory it is looked up in (no "..", no absolute path, no symlink
pointing out; io/files.py's rules), and a Hub download fetches only the files an adapter is made of.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.locate import is_repo_ref, split_ref
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME

# What an engine loads from an adapter repo (config, weights, tokenizer files): nothing else is downloaded.
HUB_FILES = (CONFIG_NAME, SAFETENSORS_NAME, PICKLE_NAME, "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
             "chat_template.jinja", "README.md")


def _inside(root: Path, name: str) -> Optional[Path]:
    """root/name when it is an adapter directory that really lies inside root, else None."""
    parts = name.split("/")
    if not name or "\0" in name or "\\" in name or any(p in ("", ".", "..") for p in parts):
        return None
    candidate = root.joinpath(*parts)
    real_root, real = os.path.realpath(root), os.path.realpath(candidate)
    if os.path.commonpath([real_root, real]) != real_root:
        return None
    return candidate if (candidate / CONFIG_NAME).is_file() else None


def find_adapter(name: str, *, directories: Sequence[Path] = (), hub: bool = False) -> Optional[str]:
    """The adapter called `name`: the first of `directories` holding it (name may be "owner/adapter"),
    else with `hub` the Hub repo `name` (OWNER/NAME[@REVISION]) downloaded with the user's own cache and
    token; None when there is none. UnusableInput (one line) when the Hub cannot be asked."""
    for root in directories:
        found = _inside(Path(root), name)
        if found is not None:
            return str(found)
    if not hub or not is_repo_ref(name):
        return None
    return _download(name)


def _download(ref: str) -> Optional[str]:
    from huggingface_hub import snapshot_download  # only for Hub names
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from peftdoctor.io.hub import describe  # never a URL's query, a header or the token

    repo_id, revision = split_ref(ref)
    try:
        directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES)))
    except Exception as exc:  # noqa: BLE001 - network, auth, disk: one line for the engine's log
        if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)) and not isinstance(exc, GatedRepoError):
            return None
        raise UnusableInput(f"{ref} {describe(exc, revision)}") from None
    return str(directory) if (directory / CONFIG_NAME).is_file() else None
