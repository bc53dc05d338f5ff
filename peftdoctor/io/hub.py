"""Read an adapter where it lives on the Hub: adapter_config.json through `hf_hub_download` (which also fills
the local cache) and the safetensors header through HTTP range reads; the tensors are never fetched.

Every request goes through huggingface_hub's own functions (its session, URL builder, headers and error
mapping), so the token (HF_TOKEN, `hf auth login`), the endpoint (HF_ENDPOINT), HF_HUB_OFFLINE, proxies,
timeouts (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT) and the cache behave as huggingface_hub defines them.
When the Hub cannot answer, the local cache answers (io/hub_cache.py); when neither can, one line says what
is missing. This module is imported only for repo ids: `check DIR` never pays for huggingface_hub.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Iterable, Optional

from huggingface_hub import HfApi, constants, get_token, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import classify, read_config_file
from peftdoctor.io.locate import split_ref
from peftdoctor.io.safetensors import Header, HeaderError, LfsPointer, declared_length, parse_header
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter

# The first range read takes what huggingface_hub's parse_safetensors_file_metadata takes: the length
# prefix and nearly every header (97% of the Hub's files); a longer header costs one more read.
FIRST_READ = 100_000
_CONTENT_RANGE = re.compile(r"^bytes (?:\d+-\d+|\*)/(\d+)$")


class HubAnswerError(Exception):
    """The Hub answered something a range read cannot use (no file size); str() is one line."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's session is an httpx(2) client: its timeouts, refused connections and cut transfers.
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# Everything that means "the Hub did not give us this" (as opposed to a defect of the adapter).
HUB_ERRORS: tuple[type[BaseException], ...] = (
    HfHubHTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError, EntryNotFoundError, HubAnswerError,
    *_transport_errors(),
)


def open_hub_adapter(ref: str, info: Optional[ModelInfo] = None) -> Adapter:
    """The adapter at OWNER/NAME[@REVISION] on the Hub, as the same Adapter value a directory gives (origin
    "hub"). `info`: the repo's listing entry (sha and siblings), when a scan already has it.
    Offline or unreachable: the local cache's copy (origin "hub-cache", with a `note` saying why), else
    UnusableInput naming what is missing. Private and gated repos say so in one line; no token is printed."""
    repo_id, revision = split_ref(ref)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UnusableInput(f"{ref}: not a directory, nor a valid repo id ({exc})") from None
    from peftdoctor.io.hub_cache import from_cache  # the fallback, below

    if constants.is_offline_mode():
        return from_cache(ref, repo_id, revision, None)
    try:
        return _online(ref, repo_id, revision, info)
    except HUB_ERRORS as exc:
        why = describe(exc, revision)
    except OSError as exc:  # the cache directory itself (permissions, a full disk)
        raise UnusableInput(f"{ref}: cannot use the Hugging Face cache: {exc.strerror or type(exc).__name__}") from None
    return from_cache(ref, repo_id, revision, why)


def _online(ref: str, repo_id: str, revision: Optional[str], info: Optional[ModelInfo]) -> Adapter:
    if info is None or info.sha is None or info.siblings is None:
        info = HfApi().model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    sha = info.sha or ""
    names = [s.rfilename for s in info.siblings or ()]
    top = sorted({n.split("/", 1)[0] for n in names})  # what a directory listing shows: files and folders
    weights = tuple(n for n in (SAFETENSORS_NAME, PICKLE_NAME) if n in top)
    if CONFIG_NAME not in top:
        nested = tuple(sorted(n.rsplit("/", 1)[0] for n in names if n.count("/") == 1
                              and n.endswith("/" + CONFIG_NAME)))
        kind, nested = classify(top, nested, lambda _key: False)  # config.json is not fetched to name a non-adapter
        return Adapter(directory=_snapshot(repo_id, sha), display=ref, kind=kind, origin="hub",
                       weight_files=weights, nested=nested)
    # Pinned to the commit the listing named: the config and the header come from the same commit, and a
    # config already in the cache for that commit is not fetched again.
    config_path = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=sha))
    header, header_error, pointers = None, None, []
    if SAFETENSORS_NAME in weights:
        try:
            header = read_hub_header(repo_id, sha, SAFETENSORS_NAME)
        except HeaderError as exc:  # the file on the Hub is broken: a finding, as for a local file
            header_error = str(exc)
            pointers += [SAFETENSORS_NAME] if isinstance(exc, LfsPointer) else []
    read = read_config_file(config_path)
    pointers += [CONFIG_NAME] if read.lfs_pointer else []
    return Adapter(directory=config_path.parent, display=ref, kind="peft-adapter", origin="hub", **read.fields(),
                   weight_files=weights, header=header, header_error=header_error, lfs_pointers=tuple(sorted(pointers)))


def _snapshot(repo_id: str, sha: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / sha


def read_hub_header(repo_id: str, revision: str, filename: str) -> Header:
    """The header of a safetensors file on the Hub, from at most two range reads of its first bytes; checked
    by the same code as a local file's (io/safetensors.py). HeaderError when the file itself is broken."""
    url = hf_hub_url(repo_id, filename, revision=revision)
    headers = build_hf_headers()
    first, size = _read_range(url, headers, 0, FIRST_READ)
    header_len = declared_length(first[:8], size)
    if 8 + header_len <= len(first):
        raw = first[8:8 + header_len]
    else:
        raw, _ = _read_range(url, headers, 8, header_len)
    return parse_header(raw, size, header_len)


def _read_range(url: str, headers: dict[str, str], start: int, count: int) -> tuple[bytes, int]:
    """(up to `count` bytes from `start`, the file's size). Streamed and cut off after `count` bytes, so a
    server that ignores Range (200 and the whole file) still costs no more than what was asked for."""
    wanted = {**headers, "Range": f"bytes={start}-{start + count - 1}"}
    with get_session().stream("GET", url, headers=wanted, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
        if response.status_code == 416:  # an empty file: no byte can be served
            return b"", _file_size(response)
        hf_raise_for_status(response)
        size = _file_size(response)
        skip = start if response.status_code == 200 else 0
        chunks, got = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            got += len(chunk)
            if got >= skip + count:
                break
    return b"".join(chunks)[skip:skip + count], size


def _file_size(response) -> int:  # noqa: ANN001 - an httpx(2) response
    if response.status_code == 200 and response.headers.get("Content-Length", "").isdigit():
        return int(response.headers["Content-Length"])
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None:
        raise HubAnswerError(f"the Hub answered a range read with HTTP {response.status_code} and no file size")
    return int(match.group(1))


def describe(exc: BaseException, revision: Optional[str] = None) -> str:
    """One line for why the Hub did not give the repo: never a URL's query, a header or the token."""
    logged_in = get_token() is not None
    if isinstance(exc, GatedRepoError):
        return ("is gated on the Hub and the token in use has not been granted access (ask for it on the repo's page)"
                if logged_in else "is gated on the Hub: log in (`hf auth login` or HF_TOKEN) with an account "
                                  "that was granted access")
    if isinstance(exc, RepositoryNotFoundError):
        return ("was not found on the Hub, or is private and the token in use cannot see it" if logged_in else
                "was not found on the Hub (if it is private, log in with `hf auth login` or set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return f"has no revision {revision!r} on the Hub"
    if isinstance(exc, OfflineModeIsEnabled):
        return "could not be fetched: HF_HUB_OFFLINE is set"
    if isinstance(exc, LocalEntryNotFoundError):  # hf_hub_download's wrapper around what really went wrong
        cause = exc.__cause__ or exc.__context__
        return describe(cause, revision) if cause is not None and cause is not exc else "could not be fetched"
    if isinstance(exc, EntryNotFoundError):
        return "lists a file the Hub then did not serve"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        forbidden = " (forbidden: the token in use lacks the permission)" if status == 403 else ""
        return f"could not be read: the Hub answered HTTP {status}{forbidden}"
    if isinstance(exc, HubAnswerError):
        return str(exc)
    kind = "did not answer in time" if "Timeout" in type(exc).__name__ else f"failed ({type(exc).__name__})"
    return f"could not be read: the Hub at {_host()} {kind}"


def _host() -> str:
    from urllib.parse import urlsplit

    url = urlsplit(constants.ENDPOINT)
    return f"{url.hostname}:{url.port}" if url.port else str(url.hostname)


def list_adapter_repos(author: str) -> list[ModelInfo]:
    """The author's model repos that hold an adapter_config.json (at the top or one folder down) or carry the
    peft tag, listed through the Hub API with their commit and files (so each check starts from them)."""
    try:
        validate_repo_id(f"{author}/x")
    except HFValidationError:
        raise UnusableInput(f"--hub {author!r}: not a user or organisation name") from None
    if constants.is_offline_mode():
        raise UnusableInput(f"--hub {author}: listing the author's repos needs the Hub, and HF_HUB_OFFLINE is set")
    try:
        listed = list(HfApi().list_models(author=author, expand=["sha", "siblings", "tags"]))
    except HUB_ERRORS as exc:
        raise UnusableInput(f"--hub {author}: the author's repos {describe(exc)}") from None
    return [m for m in listed if "peft" in (m.tags or ()) or _holds_adapter(s.rfilename for s in m.siblings or ())]


def _holds_adapter(names: Iterable[str]) -> bool:
    return any(n == CONFIG_NAME or (n.count("/") == 1 and n.endswith("/" + CONFIG_NAME)) for n in names)


@functools.lru_cache(maxsize=256)
def fetch_file(repo_id: str, filename: str) -> Optional[str]:
    """`hf_hub_download`'s local path for a small file (it fills the cache; offline it answers from it), or None
    when neither the Hub nor the cache has it. Remembered per process: a scan asks once per base."""
    try:
        return hf_hub_download(repo_id, filename)
    except (*HUB_ERRORS, HFValidationError, OSError):
        return None

