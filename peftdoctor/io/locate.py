"""Where the thing a user named lives: a directory, a file inside one, or a repo in the local Hugging
Face cache (never downloaded here). Shared by the adapter and the base readers."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.model.adapter import CONFIG_NAME

# owner/name, the form huggingface_hub accepts for repo ids (validated again by it).
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")
# owner/name@revision: a branch, tag or commit (a revision may hold "/", as in refs/pr/1).
_REPO_REF = re.compile(r"^([\w.\-]+/[\w.\-]+)(?:@(\S+))?$")
# The characters git allows in a ref name (git check-ref-format): huggingface_hub stores a
# revision as the path refs/<revision> in the cache, so it must stay a relative path of plain segments.
_REVISION_CHARS = re.compile(r"[^\x00-\x20\x7f~^:?*\[\\]{1,255}")


def is_repo_ref(target: str) -> bool:
    """Whether `target` reads as OWNER/NAME[@REVISION] (callers check first that it is no local path)."""
    return bool(_REPO_REF.match(target)) and not target.startswith(".")


def split_ref(target: str) -> tuple[str, Optional[str]]:
    """OWNER/NAME[@REVISION] -> (repo id, revision or None); UnusableInput for a revision no git ref can be."""
    match = _REPO_REF.match(target)
    if match is None:
        raise UnusableInput(f"{target}: not a repo id (OWNER/NAME or OWNER/NAME@REVISION)")
    revision = match.group(2)
    if revision is not None and not valid_revision(revision):
        raise UnusableInput(f"{target}: {revision!r} is not a revision name (a branch, tag or commit)")
    return match.group(1), revision


def valid_revision(revision: str) -> bool:
    """A branch, tag or commit name: segments separated by "/", none empty or starting with ".", no "..",
    no control characters, no backslash (so never an absolute path or a way out of the cache's refs/)."""
    return (bool(_REVISION_CHARS.fullmatch(revision)) and ".." not in revision and "@{" not in revision
            and all(part and not part.startswith(".") and not part.endswith(".lock")
                    for part in revision.split("/")))


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
