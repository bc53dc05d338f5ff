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

Also served, for peftdoctor's online `check` and `scan --hub` (tests/test_hub_online.py):

5. GET  /{repo}/resolve/{rev}/{file} with `Range: bytes=A-B` -> 206 and Content-Range (how the client reads a
   safetensors header without the tensors); `served` counts the body bytes sent per "owner/name/file"
6. GET  /api/models?author=&filter=&expand=&full=      -> the listing, paginated with a `Link: <...>; rel="next"`
   header and a `cursor` parameter, as the Hub does
7. a key "owner/name@branch" in `repos` serves another branch of that repo (its own commit)
8. `private` repos answer 401 (no token) / 404 (another token) with RepoNotFound unless `token` is sent; `gated`
   repos show their info but answer file requests 401 (no token) / 403 (another token) with GatedRepo
9. `delay` holds every answer about a repo for some seconds (a slow Hub; ended early when the server stops);
   `truncate` names files ("owner/name/file") whose GET bodies stop at half their Content-Length
10. `hostile` makes answers misbehave, as a broken or malicious server would (key -> {behaviour: value}):
   - "owner/name": "info" overrides fields of its model info and listing entry (odd values: a sha of
     "../../x", siblings that are not a list), "info_body" replaces the model info with raw bytes (not JSON),
     "trickle" sends the model info one byte every that many seconds;
   - "owner/name/file": "commit" / "etag" replace X-Repo-Commit / ETag and X-Linked-Etag, "trickle" as above,
     "retry_after" answers every GET 429 with that Retry-After, "redirect_loop" answers 302 to itself,
     "endless" sends that many bytes with no Content-Length (the length is known only at the close, HEAD
     too), "gzip" sends that many bytes gzip-compressed (Content-Encoding: gzip, whatever was accepted);
   - "listing": "self_link" makes every page's next link point to the page itself.

Xet is never offered: no `xetHash` in tree entries and no `X-Xet-*` headers, so huggingface_hub takes its plain
HTTP path even with hf_xet installed. Errors carry the `X-Error-Code` values the Hub uses (RepoNotFound,
RevisionNotFound, EntryNotFound) so huggingface_hub raises the same exception types as against the real Hub.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Optional
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

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

    @property
    def tags(self) -> list[str]:
        # As the Hub derives them: library "peft" from adapter_config.json, format tags from file names.
        return (["peft"] if "adapter_config.json" in self.files else []) + (
            ["safetensors"] if any(p.endswith(".safetensors") for p in self.files) else [])

    def info(self, gated: bool, private: bool) -> dict:
        """Every field the fake knows; the listing picks from it what `expand`/`full` ask for."""
        return {
            "_id": self.sha[:24], "id": self.repo_id, "modelId": self.repo_id, "author": self.repo_id.split("/")[0],
            "sha": self.sha, "lastModified": _LAST_MODIFIED, "createdAt": _LAST_MODIFIED,
            "private": private, "gated": "manual" if gated else False, "disabled": False, "downloads": 0, "likes": 0,
            "library_name": "peft" if "peft" in self.tags else None, "tags": self.tags,
            "siblings": [{"rfilename": path} for path in self.files],
        }


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
              content_type: str = "application/json", cut: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            # cut: promise the whole body, send half, close (a connection dropped mid-transfer)
            self.wfile.write(body[: len(body) // 2] if cut else body)

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
        if url.path == "/api/models" and self.command == "GET":
            return self._listing(query)
        if len(parts) >= 5 and parts[1] == "api" and parts[2] == "models" and self.command == "GET":
            branches = self._repo(f"{unquote(parts[3])}/{unquote(parts[4])}")
            if branches is None:
                return
            rest = parts[5:]
            if not rest:
                return self._model_info(branches, "main")
            if rest[0] == "revision" and len(rest) == 2:
                return self._model_info(branches, unquote(rest[1]))
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(branches, unquote(rest[1]), "/".join(unquote(p) for p in rest[2:]), query)
        elif len(parts) >= 6 and parts[3] == "resolve":
            branches = self._repo(f"{unquote(parts[1])}/{unquote(parts[2])}", files=True)
            if branches is None:
                return
            return self._resolve(branches, unquote(parts[4]), unquote("/".join(parts[5:])))
        self.server.unexpected.append((self.command, self.path))
        self._error(404, None, "no such route on this fake hub")

    def _token(self) -> Optional[str]:
        auth = self.headers.get("Authorization", "") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _may_see(self, repo_id: str) -> bool:
        return repo_id not in self.server.private or (self.server.token is not None
                                                      and self._token() == self.server.token)

    def _repo(self, repo_id: str, files: bool = False) -> Optional[dict[str, "_Repo"]]:
        """The branches of `repo_id`, or None once the Hub's refusal has been sent."""
        branches = self.server.repos.get(repo_id)
        if branches is not None and repo_id in self.server.delay:
            self.server.stopping.wait(self.server.delay[repo_id])
        if branches is None or not self._may_see(repo_id):
            # The Hub answers 401 to an anonymous caller and 404 to one whose token does not reach the repo.
            self._error(401 if self._token() is None else 404, "RepoNotFound", "Repository not found")
            return None
        if files and repo_id in self.server.gated and self._token() != self.server.token:
            if self._token() is None:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                                              "it and be authenticated to access it. Please log in.")
            else:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                                              "authorized list.")
            return None
        return branches

    def _revision(self, branches: dict[str, "_Repo"], revision: str) -> Optional["_Repo"]:
        found = branches.get(revision) or next((r for r in branches.values() if r.sha == revision), None)
        if found is None and revision == self.server.hostile.get(branches["main"].repo_id, {}).get("info", {}).get(
                "sha"):
            found = branches["main"]  # the commit a hostile model info named: served, as a hostile Hub would
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return found

    def _model_info(self, branches: dict[str, "_Repo"], revision: str) -> None:
        repo = self._revision(branches, revision)
        if repo is None:
            return
        hostile = self.server.hostile.get(repo.repo_id, {})
        body = hostile.get("info_body") or json.dumps(self._info(repo)).encode()
        if "trickle" in hostile:
            return self._trickle(body, hostile["trickle"], {}, "application/json")
        self._send(200, body)

    def _info(self, repo: "_Repo") -> dict:
        info = repo.info(repo.repo_id in self.server.gated, repo.repo_id in self.server.private)
        return {**info, **self.server.hostile.get(repo.repo_id, {}).get("info", {})}

    def _trickle(self, body: bytes, every: float, headers: Mapping[str, str], content_type: str) -> None:
        """The whole body promised, one byte sent every `every` seconds (until the client or the server stops)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        for i in range(len(body)):
            if self.command == "HEAD" or self.server.stopping.wait(every):
                return
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()

    def _endless(self, key: str, body: bytes, headers: Mapping[str, str]) -> None:
        """`body` with no Content-Length: HTTP/1.0 ends it when the connection closes (a stream of unknown size)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        for start in range(0, len(body), 1 << 16):
            self.wfile.write(body[start:start + (1 << 16)])  # BrokenPipeError when the client hangs up
            with self.server.log_lock:
                self.server.served[key] += len(body[start:start + (1 << 16)])

    def _listing(self, query: dict) -> None:
        """GET /api/models: id and _id always; with `expand`, those fields; with `full`, siblings and sha too."""
        author, tags = query.get("author", [None])[-1], query.get("filter", [])
        found = [branches["main"] for repo_id, branches in sorted(self.server.repos.items())
                 if (author is None or repo_id.split("/")[0] == author) and self._may_see(repo_id)
                 and all(t in branches["main"].tags for t in tags)]
        start = int(query.get("cursor", ["0"])[-1])
        page = found[start:start + self.server.page_size]
        expand = query.get("expand", [])
        full = query.get("full", ["false"])[-1].lower() in ("1", "true")
        keys = set(expand) if expand else {"likes", "downloads", "tags", "library_name", "createdAt", "private",
                                           "modelId"} | ({"siblings", "sha", "lastModified"} if full else set())
        items = [{k: v for k, v in self._info(repo).items() if k in keys or k in ("_id", "id")} for repo in page]
        headers = {}
        if self.server.hostile.get("listing", {}).get("self_link"):
            headers["Link"] = f'<http://{self.headers["Host"]}{self.path}>; rel="next"'
        elif start + self.server.page_size < len(found):
            rest = {k: v for k, v in query.items() if k != "cursor"}
            rest["cursor"] = [str(start + self.server.page_size)]
            headers["Link"] = f'<http://{self.headers["Host"]}/api/models?{urlencode(rest, doseq=True)}>; rel="next"'
        self._json(items, headers)

    def _tree(self, branches: dict[str, "_Repo"], revision: str, prefix: str, query: dict) -> None:
        repo = self._revision(branches, revision)
        if repo is None:
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

    def _resolve(self, branches: dict[str, "_Repo"], revision: str, filename: str) -> None:
        repo = self._revision(branches, revision)
        if repo is None:
            return
        file = repo.files.get(filename)
        if file is None:
            # The Hub names the commit even on a miss; huggingface_hub records it under .no_exist/.
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                               {"X-Repo-Commit": repo.sha})
        key = f"{repo.repo_id}/{filename}"
        hostile = self.server.hostile.get(key, {})
        headers = {"X-Repo-Commit": hostile.get("commit", repo.sha), "ETag": f'"{hostile.get("etag", file.etag)}"',
                   "Accept-Ranges": "bytes"}
        if file.sha256 is not None or "etag" in hostile:
            headers["X-Linked-Etag"] = f'"{hostile.get("etag", file.sha256)}"'
            headers["X-Linked-Size"] = str(len(file.data))
        if self._misbehave(key, hostile, file, headers):
            return
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
        cut = key in self.server.truncate
        if self.command == "GET":
            with self.server.log_lock:
                self.server.served[key] += len(data) // 2 if cut else len(data)
        self._send(status, data, headers, content_type="application/octet-stream", cut=cut)


    def _misbehave(self, key: str, hostile: Mapping[str, Any], file: _File, headers: dict[str, str]) -> bool:
        """Answer as `hostile` says, if it says anything for this request; False to answer normally."""
        if "redirect_loop" in hostile:
            self._send(302, b"", {**headers, "Location": self.path})
        elif "retry_after" in hostile and self.command == "GET":
            self._error(429, None, "Too many requests", {"Retry-After": str(hostile["retry_after"])})
        elif "trickle" in hostile:
            self._trickle(file.data, hostile["trickle"], headers, "application/octet-stream")
        elif "endless" in hostile:
            self._endless(key, file.data + b" " * (hostile["endless"] - len(file.data)), headers)
        elif "gzip" in hostile:
            packed = gzip.compress(file.data + b" " * (hostile["gzip"] - len(file.data)), compresslevel=1)
            self._endless(key, packed, {**headers, "Content-Encoding": "gzip"})
        else:
            return False
        return True


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128  # a scan sends many requests at once; the default backlog (5) refuses some

    def __init__(self, repos: dict[str, dict[str, _Repo]], log: list, served: Counter, *,
                 private: Collection[str] = (), gated: Collection[str] = (), token: Optional[str] = None,
                 delay: Optional[Mapping[str, float]] = None, truncate: Collection[str] = (),
                 page_size: int = 100, hostile: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos
        self.log = log
        self.served = served
        self.log_lock = threading.Lock()
        self.unexpected: list[tuple[str, str]] = []
        self.private, self.gated, self.token = frozenset(private), frozenset(gated), token
        self.delay, self.truncate, self.page_size = dict(delay or {}), frozenset(truncate), page_size
        self.hostile = {key: dict(value) for key, value in (hostile or {}).items()}
        self.stopping = threading.Event()

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - the stdlib's signature
        pass  # a client that hung up (a timeout, a cut transfer) is what some tests ask for, not a failure


@contextlib.contextmanager
def serve_repos(repos: Mapping[str, Path], *, lifetime: float = 120.0, log: Optional[list] = None,
                served: Optional[Counter] = None, private: Collection[str] = (), gated: Collection[str] = (),
                token: Optional[str] = None, delay: Optional[Mapping[str, float]] = None,
                truncate: Collection[str] = (), page_size: int = 100,
                hostile: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Iterator[str]:
    """Serve each `owner/name -> directory` as a model repo; yield the endpoint URL (http://127.0.0.1:PORT).

    The directories are read once, at start: the repo is a snapshot (one commit per branch), later edits are
    not seen. A key "owner/name@branch" adds a branch to "owner/name" (which must be served too, as main).
    The server stops when the block ends, or after `lifetime` seconds whatever happens (a hung test cannot
    keep it alive). Every request received is appended to `log` as (method, raw path) if a list is given;
    `served` (a Counter) receives the body bytes sent per "owner/name/file". `private`, `gated`, `token`,
    `delay`, `truncate`, `page_size` and `hostile` are described in the module docstring.
    Requests outside the routes above are answered 404/405 and make the block raise on exit, so a test
    cannot pass while huggingface_hub asked for something this fake does not implement.
    """
    loaded: dict[str, dict[str, _Repo]] = {}
    for key, path in repos.items():
        repo_id, _, branch = key.partition("@")
        loaded.setdefault(repo_id, {})[branch or "main"] = _load_repo(repo_id, Path(path))
    missing_main = sorted(repo_id for repo_id, branches in loaded.items() if "main" not in branches)
    if missing_main:
        raise ValueError(f"branches served without a main: {missing_main}")
    server = _HubServer(loaded, log if log is not None else [], served if served is not None else Counter(),
                        private=private, gated=gated, token=token, delay=delay, truncate=truncate,
                        page_size=page_size, hostile=hostile)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fake-hf-hub", daemon=True)
    stop_lock = threading.Lock()

    def stop() -> None:  # from the timer or the `with` exit, whichever comes first; the other is a no-op
        with stop_lock:
            server.stopping.set()  # wake the handlers held by `delay`
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
