"""When the Hub cannot answer (HF_HUB_OFFLINE, no network, a private repo): the local cache's copy of a repo,
or one line naming exactly what the cache lacks. Never a request: `local_files_only=True` throughout."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

from huggingface_hub import get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import CachedRepoTreeNotFoundError, IncompleteSnapshotError, LocalEntryNotFoundError

from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import open_adapter
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter

# What check reads from a repo; the rest of a partial snapshot (README, tokenizer) does not matter here.
WANTED = (CONFIG_NAME, SAFETENSORS_NAME, PICKLE_NAME)


def from_cache(ref: str, repo_id: str, revision: Optional[str], why: Optional[str]) -> Adapter:
    """The cached snapshot of `repo_id` at `revision` read as an adapter (origin "hub-cache"). `why`: why the
    Hub was not used, None when the user asked for offline (HF_HUB_OFFLINE): then nothing is said."""
    because = f"{why}, and" if why else "HF_HUB_OFFLINE is set and"
    get = f"`hf download {repo_id}" + (f" --revision {revision}`" if revision else "`")
    try:
        directory = Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=WANTED))
    except IncompleteSnapshotError as exc:
        lacking = _missing(repo_id, Path(exc.snapshot_path)) if exc.snapshot_path else []
        raise UnusableInput(f"{ref}: {because} its copy in the local Hugging Face cache lacks "
                            f"{', '.join(lacking) or 'files'} ({get} fetches them)") from None
    except (LocalEntryNotFoundError, OSError):
        where = f"at revision {revision!r} " if revision else ""
        raise UnusableInput(f"{ref}: {because} it is not in the local Hugging Face cache {where}"
                            f"(download it first: {get})") from None
    names = os.listdir(directory)
    if CONFIG_NAME not in names and not _listing_known(repo_id, directory):
        # A snapshot folder without the config and without a listing: a download that was cut off (a hostile or
        # failing Hub, a killed run) left it, not a repo known to be empty.
        raise UnusableInput(f"{ref}: {because} the local Hugging Face cache holds no {CONFIG_NAME} of it; "
                            f"{get} fetches it")
    if CONFIG_NAME in names and not any(n in names for n in WANTED[1:]) and not _listing_known(repo_id, directory):
        # Only the config is cached (a previous online check, or a library that fetched just that file):
        # whether the repo has weights is unknown, and "no weights" would be a wrong finding.
        raise UnusableInput(f"{ref}: {because} the local Hugging Face cache holds its {CONFIG_NAME} but not its "
                            f"weights ({SAFETENSORS_NAME}); {get} fetches them")
    adapter = open_adapter(str(directory))
    note = f"{ref} {why}; checked its copy in the local cache (commit {directory.name[:12]})" if why else None
    return replace(adapter, display=ref, origin="hub-cache", note=note)


def _listing_known(repo_id: str, snapshot: Path) -> bool:
    """Whether huggingface_hub cached this commit's file listing (snapshot_download does): then a weights
    file absent from the snapshot is absent from the repo, as snapshot_download has already checked."""
    try:
        get_cached_repo_tree(repo_id, revision=snapshot.name)
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return False
    return True


def _missing(repo_id: str, snapshot: Path) -> list[str]:
    try:
        listed = {f.path for f in get_cached_repo_tree(repo_id, revision=snapshot.name)}
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return []
    return [name for name in WANTED if name in listed and not (snapshot / name).exists()]
