"""Read an adapter where it lives on the Hub: adapter_config.json through `hf_hub_download` (which also fills
the local cache) and the safetensors header through HTTP range reads; the tensors are never fetched.

Every request goes through huggingface_hub's own functions (its session, URL builder, headers and error
mapping), so the token (HF_TOKEN, `hf auth login`), the endpoint (HF_ENDPOINT), HF_HUB_OFFLINE, proxies,
timeouts (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT) and the cache behave as huggingface_hub defines them.
When the Hub cannot answer, the local cache answers (io/hub_cache.py); when neither can, one line says what
is missing. Every request runs inside io/hub_guard.py's scope (deadlines, caps, commit ids and ETags checked
before they become cache paths), and whatever the Hub says about a repo is checked here before it is used
(`Listed`). This module is imported only for repo ids: `check DIR` never pays for huggingface_hub.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

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
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, http_backoff, validate_repo_id

from peftdoctor.errors import UnusableInput
from peftdoctor.io import hub_guard
from peftdoctor.io.adapter import classify, other_format, read_config_file
from peftdoctor.io.hub_guard import COMMIT, HubAnswerError, Scope
from peftdoctor.io.locate import split_ref
from peftdoctor.io.safetensors import Header, HeaderError, LfsPointer, declared_length, parse_header
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter

# The first range read takes what huggingface_hub's parse_safetensors_file_metadata takes: the length
# prefix and nearly every header (97% of the Hub's files); a longer header costs one more read.
FIRST_READ = 100_000
_CONTENT_RANGE = re.compile(r"^bytes (?:\d+-\d+|\*)/(\d+)$")
hub_guard.install()


def _request_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's session is an httpx(2) client: its timeouts, refused connections, cut transfers and
    # redirect loops (HTTPError is the base of them all).
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(__import__(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    try:  # a file answer without X-Repo-Commit or ETag (an OSError: caught before the cache's own errors)
        from huggingface_hub.errors import FileMetadataError
        found.append(FileMetadataError)
    except ImportError:
        pass
    return tuple(found)


# Everything that means "the Hub did not give us this" (as opposed to a defect of the adapter).
HUB_ERRORS: tuple[type[BaseException], ...] = (
    HfHubHTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError, EntryNotFoundError, HubAnswerError,
    *_request_errors(),
)


@dataclass(frozen=True)
class Listed:
    """What the Hub's listing or model info says about one repo, checked: a valid repo id, a 40-hex commit id
    (it becomes a cache path), the file names and tags as strings."""

    repo_id: str
    sha: str
    files: tuple[str, ...]
    tags: tuple[str, ...] = ()

    @classmethod
    def of(cls, entry: Any) -> "Listed":
        """From a listing entry or model info (a dict, or huggingface_hub's ModelInfo); HubAnswerError for an
        answer that is not what the Hub's API returns."""
        get = entry.get if isinstance(entry, dict) else lambda key: getattr(entry, key, None)
        repo_id, sha, siblings, tags = get("id"), get("sha"), get("siblings"), get("tags") or []
        if not isinstance(repo_id, str) or not _valid_repo_id(repo_id):
            raise HubAnswerError("the Hub's answer names no valid repo id")
        if not isinstance(sha, str) or not COMMIT.match(sha):
            raise HubAnswerError("the Hub's answer names a commit that is not a 40-hex-digit commit id (sha)")
        if not isinstance(siblings, list) or not isinstance(tags, list):
            raise HubAnswerError("the Hub's answer lists its files or tags as something else than a list")
        files = [s.get("rfilename") if isinstance(s, dict) else getattr(s, "rfilename", None) for s in siblings]
        if not all(isinstance(f, str) for f in files) or not all(isinstance(t, str) for t in tags):
            raise HubAnswerError("the Hub's answer lists a file or tag that is not a name")
        return cls(repo_id, sha, tuple(files), tuple(tags))

    def holds_adapter(self) -> bool:
        """Tagged peft, or an adapter_config.json at the top or one folder down."""
        return "peft" in self.tags or any(n == CONFIG_NAME or (n.count("/") == 1 and n.endswith("/" + CONFIG_NAME))
                                          for n in self.files)


def _valid_repo_id(repo_id: str) -> bool:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return repo_id.count("/") == 1


def open_hub_adapter(ref: str, listed: Optional[Listed] = None) -> Adapter:
    """The adapter at OWNER/NAME[@REVISION] on the Hub, as the same Adapter value a directory gives (origin
    "hub"). `listed`: the repo's listing entry, when a scan already has it. Its requests run in the
    io/hub_guard.py scope active here (a scan's: its deadline, its Ctrl-C), else in one of its own.
    Offline or unreachable: the local cache's copy (origin "hub-cache", with a `note` saying why), else
    UnusableInput naming what is missing. Private and gated repos say so in one line; no token, no password of
    HF_ENDPOINT is printed."""
    repo_id, revision = split_ref(ref)
    if not _valid_repo_id(repo_id):
        raise UnusableInput(f"{ref}: not a directory, nor a valid repo id (OWNER/NAME)")
    from peftdoctor.io.hub_cache import from_cache  # the fallback, below

    if constants.is_offline_mode():
        return from_cache(ref, repo_id, revision, None)
    try:
        with hub_guard.scope():
            return _online(ref, repo_id, revision, listed)
    except HUB_ERRORS as exc:
        if isinstance(exc, hub_guard.HubCancelled):
            raise KeyboardInterrupt from None
        why = describe(exc, revision)
    except OSError as exc:  # the cache directory itself (permissions, a full disk)
        raise UnusableInput(f"{ref}: cannot use the Hugging Face cache: {exc.strerror or type(exc).__name__}") from None
    return from_cache(ref, repo_id, revision, why)


def model_info(repo_id: str, revision: Optional[str]) -> Listed:
    """huggingface_hub's model_info, checked: HubAnswerError when the answer is not a model info."""
    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not JSON, or fields of other types
        raise HubAnswerError(f"the Hub's answer is not a model info ({type(exc).__name__})") from None
    listed = Listed.of(info)
    if listed.repo_id != repo_id:
        raise HubAnswerError(f"the Hub's model info names another repo ({listed.repo_id})")
    return listed


def _online(ref: str, repo_id: str, revision: Optional[str], listed: Optional[Listed]) -> Adapter:
    if listed is None or listed.repo_id != repo_id:
        listed = model_info(repo_id, revision)
    sha, names = listed.sha, listed.files
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
    # Named from the config and the repo's file listing, as io/adapter.py names a directory (mlx-lm, ...).
    kind = other_format(read.config, top) or "peft-adapter"
    return Adapter(directory=config_path.parent, display=ref, kind=kind, origin="hub", **read.fields(),
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
        return f"could not be read: {exc}"
    # Only the exception's type: httpx's and huggingface_hub's texts name the URL, and with it any password.
    kind = "did not answer in time" if "Timeout" in type(exc).__name__ else f"failed ({type(exc).__name__})"
    return f"could not be read: the Hub at {_host()} {kind}"


def _host() -> str:
    from urllib.parse import urlsplit

    url = urlsplit(constants.ENDPOINT)
    return f"{url.hostname}:{url.port}" if url.port else str(url.hostname)


# An entry of a listing that could not be used: (repo id or the listing's name, one-line reason).
Unlisted = tuple[str, str]


def list_adapter_repos(author: str, within: Optional[Scope] = None) -> Iterator[Union[Listed, Unlisted]]:
    """The author's model repos that hold an adapter_config.json (at the top or one folder down) or carry the
    peft tag, listed through the Hub API with their commit and files (so each check starts from them), one
    page at a time (memory stays that of a page, however many repos the author has). An entry the Hub
    answered oddly comes as an Unlisted; a listing that fails after its first page ends with one Unlisted
    naming it; a first page that fails is UnusableInput."""
    if not _valid_repo_id(f"{author}/x"):
        raise UnusableInput(f"--hub {author!r}: not a user or organisation name")
    if constants.is_offline_mode():
        raise UnusableInput(f"--hub {author}: listing the author's repos needs the Hub, and HF_HUB_OFFLINE is set")
    first = True
    try:
        for page in _pages(f"{HfApi().endpoint}/api/models", within,
                           {"author": author, "expand": ["sha", "siblings", "tags"]}):
            first = False
            for entry in page:
                try:
                    listed = Listed.of(entry)
                except HubAnswerError as exc:
                    name = entry.get("id") if isinstance(entry, dict) else None
                    if isinstance(name, str) and _valid_repo_id(name):
                        yield name, f"{name}: {describe(exc)}"
                    continue
                if listed.holds_adapter():
                    yield listed
    except HUB_ERRORS as exc:
        if isinstance(exc, hub_guard.HubCancelled):
            raise KeyboardInterrupt from None
        if first:
            raise UnusableInput(f"--hub {author}: the author's repos {describe(exc)}") from None
        yield f"{author} (listing)", f"the rest of the author's repos {describe(exc)}"


def _pages(url: str, within: Optional[Scope], params: Optional[dict[str, Any]]) -> Iterator[list[Any]]:
    """The pages of a Hub listing, following its `Link: <...>; rel="next"` as huggingface_hub's paginate does,
    with its session, retries and errors; a link back to a page already read ends it (HubAnswerError)."""
    seen: set[str] = set()
    next_url: Optional[str] = url
    while next_url is not None:
        seen.add(next_url)
        with hub_guard.scope(within):
            response = http_backoff("GET", next_url, params=params, headers=build_hf_headers(),
                                    timeout=constants.HF_HUB_ETAG_TIMEOUT)
            hf_raise_for_status(response)
            try:
                page = response.json()
            except ValueError:
                raise HubAnswerError("the Hub's listing page is not JSON") from None
        if not isinstance(page, list):
            raise HubAnswerError("the Hub's listing page is not a list")
        params = None  # the next link carries them (an empty dict would erase its query)
        next_url = response.links.get("next", {}).get("url")
        if next_url in seen:
            raise HubAnswerError("the Hub's listing links back to a page already read")
        yield page


@functools.lru_cache(maxsize=256)
def fetch_file(repo_id: str, filename: str) -> Optional[str]:
    """`hf_hub_download`'s local path for a small file (it fills the cache; offline it answers from it), or None
    when neither the Hub nor the cache has it. Remembered per process: a scan asks once per base."""
    try:
        with hub_guard.scope():
            return hf_hub_download(repo_id, filename)
    except (*HUB_ERRORS, HFValidationError, OSError):
        return None

