"""A tiny fake Hugging Face Hub, just enough for huggingface_hub's real `snapshot_download` to fetch from it.

`serve_repos({"owner/name": Path(...)})` serves each directory as a model repo with a single commit, on
127.0.0.1 (port chosen by the OS), from a background thread that stops itself when the `with` block ends or,
at the latest, after `lifetime` seconds.

The requests `snapshot_download(repo_id, endpoint=..., cache_dir=...)` makes (huggingface_hub 2.x):

1. GET  /api/models/{repo}/revision/{rev}        -> model info; `sha` is the commit the rest is pinned to
2. GET  /api/models/{repo}/tree/{sha}?recursive=  -> file listing (path, size, oid, lfs), cached as trees/{sha}.json
3. HEAD /{repo}/resolve/{sha}/{file}             -> X-Repo-Commit, ETag (or X-Linked-Etag), Content-Length
4. GET  /{repo}/resolve/{sha}/{file}             -> the bytes (Range honoured), stored as blobs/{etag}

and, only when telemetry is on, GET /api/agent-harnesses (answered with an empty registry).

Xet is never offered: no `xetHash` in tree entries and no `X-Xet-*` headers, so huggingface_hub takes its plain
HTTP path even with hf_xet installed. Errors carry the `X-Error-Code` values the Hub uses (RepoNotFound,
RevisionNotFound, EntryNotFound) so huggingface_hub raises the same exception types as against the real Hub.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Mapping, Optional
from urllib.parse import parse_qs, unquote, urlsplit

# Files stored through Git LFS on the Hub (a subset of its default .gitattributes), plus anything large.
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_LAST_MODIFIED = "2024-01-01T00:00:00.000Z"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class _File:
    path: str  # "/"-separated, relative to the repo root
    data: bytes
    git_oid: str  # sha1 of the git blob (for LFS files: of the pointer file)
    sha256: Optional[str]  # set for LFS files only

    @property
    def etag(self) -> str:
        # What the Hub sends: the sha256 for LFS files (as X-Linked-Etag), the git blob id otherwise.
        return self.sha256 or self.git_oid

    def tree_entry(self) -> dict:
        entry: dict = {"type": "file", "oid": self.git_oid, "size": len(self.data), "path": self.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self._pointer())}
        return entry

    def _pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()


@dataclass(frozen=True)
class _Repo:
    repo_id: str
    sha: str
    files: dict[str, _File]

    def directories(self) -> list[str]:
        dirs = {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}
        return sorted(dirs)


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _load_repo(repo_id: str, root: Path) -> _Repo:
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        raise ValueError(f"not an owner/name repo id: {repo_id!r}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    files: dict[str, _File] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".git/") or rel.startswith(".cache/"):
            continue
        data = path.read_bytes()
        if path.suffix in _LFS_SUFFIXES or len(data) >= _LFS_MIN_SIZE:
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = _File(rel, data, "", sha256)._pointer()
            files[rel] = _File(rel, data, _git_blob_oid(pointer), sha256)
        else:
            files[rel] = _File(rel, data, _git_blob_oid(data), None)
    # One commit per repo, named after its content: the same tree always gets the same sha.
    sha = hashlib.sha1(json.dumps([repo_id, [(f.path, f.git_oid) for f in files.values()]]).encode()).hexdigest()
    return _Repo(repo_id, sha, files)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1"
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers once the server stops
    server: "_HubServer"

    # -- plumbing -------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass  # requests are recorded in server.log instead

    def _record(self) -> None:
        with self.server.log_lock:
            self.server.log.append((self.command, self.path))

    def _send(self, status: int, body: bytes = b"", headers: Optional[Mapping[str, str]] = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object, headers: Optional[Mapping[str, str]] = None) -> None:
        self._send(200, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: Optional[str], message: str,
               headers: Optional[Mapping[str, str]] = None) -> None:
        extra = dict(headers or {})
        if code is not None:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._send(status, json.dumps({"error": message}).encode(), extra)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def _refuse(self) -> None:
        self._record()
        self.server.unexpected.append((self.command, self.path))
        self._error(405, None, f"{self.command} is not served by this fake hub")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT = _refuse  # noqa: N815

    # -- routes ---------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._record()
        url = urlsplit(self.path)
        parts = url.path.split("/")  # raw segments; unquoted one by one so "%2F" in a revision stays put
        query = parse_qs(url.query)
        if url.path == "/api/agent-harnesses" and self.command == "GET":
            # Fetched from HF_ENDPOINT to build the User-Agent unless HF_HUB_DISABLE_TELEMETRY is set.
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if len(parts) >= 5 and parts[1] == "api" and parts[2] == "models" and self.command == "GET":
            repo = self._repo(f"{unquote(parts[3])}/{unquote(parts[4])}")
            if repo is None:
                return
            rest = parts[5:]
            if not rest:
                return self._model_info(repo, "main")
            if rest[0] == "revision" and len(rest) == 2:
                return self._model_info(repo, unquote(rest[1]))
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, unquote(rest[1]), "/".join(unquote(p) for p in rest[2:]), query)
        elif len(parts) >= 6 and parts[3] == "resolve":
            repo = self._repo(f"{unquote(parts[1])}/{unquote(parts[2])}")
            if repo is None:
                return
            return self._resolve(repo, unquote(parts[4]), unquote("/".join(parts[5:])))
        self.server.unexpected.append((self.command, self.path))
        self._error(404, None, "no such route on this fake hub")

    def _repo(self, repo_id: str) -> Optional[_Repo]:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _revision_ok(self, repo: _Repo, revision: str) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    def _model_info(self, repo: _Repo, revision: str) -> None:
        if not self._revision_ok(repo, revision):
            return
        self._json({
            "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": repo.sha, "lastModified": _LAST_MODIFIED, "createdAt": _LAST_MODIFIED,
            "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "library_name": "peft", "tags": ["peft"],
            "siblings": [{"rfilename": path} for path in repo.files],
        })

    def _tree(self, repo: _Repo, revision: str, prefix: str, query: dict) -> None:
        if not self._revision_ok(repo, revision):
            return
        recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        prefix = prefix.strip("/")
        if prefix and prefix in repo.files:
            return self._json([repo.files[prefix].tree_entry()])
        if prefix and prefix not in repo.directories():
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
        base = f"{prefix}/" if prefix else ""

        def wanted(path: str) -> bool:
            return path.startswith(base) and (recursive or "/" not in path[len(base):])

        entries = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in repo.directories() if wanted(d)]
        entries += [f.tree_entry() for p, f in repo.files.items() if wanted(p)]
        self._json(sorted(entries, key=lambda e: e["path"]))

    def _resolve(self, repo: _Repo, revision: str, filename: str) -> None:
        if not self._revision_ok(repo, revision):
            return
        file = repo.files.get(filename)
        if file is None:
            # The Hub names the commit even on a miss; huggingface_hub records it under .no_exist/.
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                               {"X-Repo-Commit": repo.sha})
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{file.etag}"', "Accept-Ranges": "bytes"}
        if file.sha256 is not None:
            headers["X-Linked-Etag"] = f'"{file.sha256}"'
            headers["X-Linked-Size"] = str(len(file.data))
        data, status = file.data, 200
        match = _RANGE.match(self.headers.get("Range", "") or "")
        if match and self.command == "GET" and (match.group(1) or match.group(2)):
            size = len(file.data)
            start_s, end_s = match.groups()
            start = int(start_s) if start_s else max(size - int(end_s), 0)
            end = min(int(end_s), size - 1) if (start_s and end_s) else size - 1
            if start >= size or start > end:
                return self._error(416, None, "Range not satisfiable", {"Content-Range": f"bytes */{size}"})
            data, status = file.data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(status, data, headers, content_type="application/octet-stream")


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, repos: dict[str, _Repo], log: list) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos
        self.log = log
        self.log_lock = threading.Lock()
        self.unexpected: list[tuple[str, str]] = []


@contextlib.contextmanager
def serve_repos(repos: Mapping[str, Path], *, lifetime: float = 120.0,
                log: Optional[list] = None) -> Iterator[str]:
    """Serve each `owner/name -> directory` as a model repo; yield the endpoint URL (http://127.0.0.1:PORT).

    The directories are read once, at start: the repo is a snapshot (one commit), later edits are not seen.
    The server stops when the block ends, or after `lifetime` seconds whatever happens (a hung test cannot
    keep it alive). Every request received is appended to `log` as (method, raw path) if a list is given.
    Requests outside the routes above are answered 404/405 and make the block raise on exit, so a test
    cannot pass while huggingface_hub asked for something this fake does not implement.
    """
    loaded = {repo_id: _load_repo(repo_id, Path(path)) for repo_id, path in repos.items()}
    server = _HubServer(loaded, log if log is not None else [])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fake-hf-hub", daemon=True)
    stop_lock = threading.Lock()

    def stop() -> None:  # from the timer or the `with` exit, whichever comes first; the other is a no-op
        with stop_lock:
            if thread.is_alive():
                server.shutdown()  # returns once serve_forever has stopped
            server.server_close()  # close the listening socket: connections are refused from now on
            thread.join(timeout=5)

    timer = threading.Timer(lifetime, stop)
    timer.daemon = True
    thread.start()
    timer.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        timer.cancel()
        stop()
    if server.unexpected:
        raise AssertionError(f"fake hub got requests it does not implement: {server.unexpected}")


def commit_sha(repo_id: str, directory: Path) -> str:
    """The commit sha `serve_repos` gives `directory` when served as `repo_id`."""
    return _load_repo(repo_id, Path(directory)).sha
