"""What a hostile or broken Hub cannot do to a check, with huggingface_hub's own client kept in the path.

huggingface_hub trusts the server: an X-Repo-Commit or ETag holding "../" becomes a path in the cache, a body
trickled one byte at a time never ends, `Retry-After: 3600` sleeps an hour, a gzip body is inflated onto disk
before its size is known. Its session (`get_session`) is built by a client factory; `install()` wraps that
factory so that every client it makes carries two httpx event hooks. They act only inside `scope()` (the
Hub reads of io/hub.py), so a program that imports peftdoctor keeps huggingface_hub as it was for its own
downloads. Inside a scope each request:

- asks for plain bytes (Accept-Encoding: identity) and refuses an encoded answer (no inflation on disk);
- on a file answer (`/resolve/`), refuses an X-Repo-Commit that is not 40 hex digits and an ETag that is not a
  plain name (both become cache paths), and drops the Xet headers (its downloader would bypass the cap);
- refuses a Retry-After or rate-limit reset longer than MAX_WAIT seconds instead of sleeping it;
- streams its body through a cap: MAX_BODY_BYTES (everything read whole is a JSON document: a config, a
  model info, a listing page), or the end of the range asked for; what is past the cap is never handed on,
  so never written;
- ends at its own deadline (PEFTDOCTOR_HUB_REQUEST_TIMEOUT seconds, default 60) and at the scope's (one
  repo's check, or a whole scan: PEFTDOCTOR_HUB_DEADLINE, default 1800), each read waiting no longer than
  what is left; and stops at once when the scope is cancelled (Ctrl-C in a scan).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from peftdoctor.io.files import MAX_JSON_BYTES

MAX_BODY_BYTES = MAX_JSON_BYTES
MAX_WAIT = 10.0  # seconds of Retry-After honoured; a longer wait is an answer, not a pause
COMMIT = re.compile(r"^[0-9a-f]{40}$")
PLAIN_NAME = re.compile(r"^[0-9A-Za-z_-]{1,128}$")  # a blob's name in the cache: no "/", no "..", no drive
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
_USERINFO = re.compile(r"(?<=//)[^/@\s]*@")


class HubAnswerError(Exception):
    """The Hub answered something peftdoctor will not use (a bad commit id, too many bytes, no file size);
    str() is one line and never holds a URL."""


class HubDeadline(HubAnswerError):
    """A request, or the check or scan it belongs to, ran past its deadline."""


class HubCancelled(HubAnswerError):
    """The scope was cancelled (Ctrl-C): the request stopped where it was."""


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 and math.isfinite(value) else default


@dataclass(frozen=True)
class Scope:
    """The Hub reads of one check or one scan: their deadline (time.monotonic) and a flag that cancels them."""

    until: float
    request_timeout: float
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


_SCOPE: ContextVar[Optional[Scope]] = ContextVar("peftdoctor_hub_scope", default=None)


def new_scope() -> Scope:
    """A scope starting now, its limits read from the environment."""
    return Scope(time.monotonic() + _seconds("PEFTDOCTOR_HUB_DEADLINE", 1800.0),
                 _seconds("PEFTDOCTOR_HUB_REQUEST_TIMEOUT", 60.0))


@contextlib.contextmanager
def scope(given: Optional[Scope] = None) -> Iterator[Scope]:
    """Guard the requests made in this block (this thread): `given` (a scan's, shared by its threads), else
    the scope already active here, else a new one."""
    current = given or _SCOPE.get() or new_scope()
    token = _SCOPE.set(current)
    try:
        yield current
    finally:
        _SCOPE.reset(token)


def _on_request(request) -> None:  # noqa: ANN001 - an httpx(2) Request
    current = _SCOPE.get()
    if current is None:
        return
    _check_time(current)
    now = time.monotonic()
    deadline = min(now + current.request_timeout, current.until)
    request.extensions["peftdoctor_deadline"] = deadline
    timeouts = dict(request.extensions.get("timeout") or {})
    for key in ("connect", "read", "write", "pool"):  # no single wait outlives the deadline
        given = timeouts.get(key)
        timeouts[key] = min(given if given is not None else math.inf, max(deadline - now, 0.001))
    request.extensions["timeout"] = timeouts
    request.headers["Accept-Encoding"] = "identity"


def _check_time(current: Scope, grace: float = 0.0) -> None:
    if current.cancelled.is_set():
        raise HubCancelled("stopped: interrupted")
    if time.monotonic() >= current.until - grace:
        raise HubDeadline("did not finish in time: the time for the check or scan ran out (PEFTDOCTOR_HUB_DEADLINE)")


def _on_response(response) -> None:  # noqa: ANN001 - an httpx(2) Response
    current = _SCOPE.get()
    if current is None:
        return
    headers, request = response.headers, response.request
    if headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        raise HubAnswerError(f"the Hub answered with {headers['Content-Encoding'][:20]!r}-encoded content where plain "
                             "bytes were asked for")
    wait = _wait_asked(response) if response.status_code >= 400 else None  # what a retry would sleep
    longest = _seconds("PEFTDOCTOR_HUB_MAX_WAIT", MAX_WAIT)
    if wait is not None and wait > longest:
        raise HubAnswerError(f"the Hub answered HTTP {response.status_code} and asks to wait {wait:.0f} s before "
                             f"retrying (peftdoctor waits at most {longest:.0f} s)")
    ranged = _RANGE.match(request.headers.get("Range", ""))
    cap = int(ranged.group(2)) + 1 if ranged else MAX_BODY_BYTES  # a 200 ignoring Range is cut there too
    if "/resolve/" in request.url.path:
        _check_file_headers(headers, None if ranged else cap)
    deadline = request.extensions.get("peftdoctor_deadline", current.until)
    response.stream = _capped(response.stream, cap, deadline, current)


def _check_file_headers(headers, whole_cap: Optional[int]) -> None:  # noqa: ANN001 - httpx(2) Headers
    """`whole_cap`: for a file read whole (not a range), the most bytes it may declare."""
    commit = headers.get("X-Repo-Commit")
    if commit is not None and not COMMIT.match(commit):
        raise HubAnswerError("the Hub named a commit that is not a 40-hex-digit commit id (X-Repo-Commit)")
    for name in ("X-Linked-Etag", "ETag"):
        value = headers.get(name)
        if value is not None and not PLAIN_NAME.match(_normalize_etag(value)):
            raise HubAnswerError(f"the Hub answered an ETag ({name}) that is not a plain name (it would be a path in "
                                 "the cache)")
    for name in [n for n in headers if n.lower().startswith("x-xet-")]:
        del headers[name]  # huggingface_hub then downloads over plain HTTP, through the cap below
    declared = headers.get("X-Linked-Size") or headers.get("Content-Length") or ""
    if whole_cap is not None and declared.isdigit() and int(declared) > whole_cap:  # refused before any byte
        raise HubAnswerError(f"the Hub's file is {int(declared)} bytes, more than the {whole_cap} a config may be")


def _normalize_etag(value: str) -> str:  # as huggingface_hub.file_download._normalize_etag does
    return value.strip().removeprefix("W/").strip('"')


def _wait_asked(response) -> Optional[float]:  # noqa: ANN001 - an httpx(2) Response
    """The seconds the answer asks a client to wait before retrying, as huggingface_hub would read them."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    if response.status_code == 429:
        try:
            from huggingface_hub.utils import parse_ratelimit_headers
        except ImportError:  # an older huggingface_hub: it does not read these headers either
            return None
        info = parse_ratelimit_headers(response.headers)
        if info is not None and info.remaining == 0:
            return float(info.reset_in_seconds)
    return None


def _capped(inner, cap: int, deadline: float, current: Scope):  # noqa: ANN001, ANN202 - httpx(2) streams
    """A response body that stops at `cap` bytes, at `deadline`, or when the scope is cancelled: a SyncByteStream
    of the httpx the response came from (huggingface_hub's session is httpx2; httpx for older releases)."""
    return _capped_type(type(inner))(inner, cap, deadline, current)


@functools.lru_cache(maxsize=4)
def _capped_type(stream_type: type) -> type:
    base = next(c for c in stream_type.__mro__ if c.__name__ == "SyncByteStream")
    return type("Capped", (_Capped, base), {})


class _Capped:
    def __init__(self, inner, cap: int, deadline: float, current: Scope) -> None:  # noqa: ANN001
        self.inner, self.cap, self.deadline, self.scope = inner, cap, deadline, current

    def __iter__(self) -> Iterator[bytes]:
        got = 0
        chunks = iter(self.inner)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except Exception as exc:
                # A read cut short by the timeout _on_request shortened to the deadline: the deadline's message.
                if "Timeout" in type(exc).__name__ and time.monotonic() >= self.deadline - 0.01:
                    _check_time(self.scope, grace=0.01)
                    raise self._late() from None
                raise
            got += len(chunk)
            if got > self.cap:
                raise HubAnswerError(f"the Hub sent more than the {self.cap} bytes asked for or allowed")
            _check_time(self.scope)
            if time.monotonic() >= self.deadline:
                raise self._late()
            yield chunk

    def _late(self) -> HubDeadline:
        return HubDeadline(f"did not finish in time: one request took longer than {self.scope.request_timeout:g} s "
                           "(PEFTDOCTOR_HUB_REQUEST_TIMEOUT)")

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def redact(text: str) -> str:
    """`text` with the user:password of every URL in it taken out."""
    return _USERINFO.sub("***@", text)


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_installed = threading.Lock()
_done: list[bool] = []


def install() -> None:
    """Wrap huggingface_hub's client factory once per process (whatever factory is set: the user's own too),
    and keep credentials of HF_ENDPOINT out of its log lines."""
    with _installed:
        if _done:
            return
        from huggingface_hub.utils import _http, set_client_factory

        previous: Callable = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

        def guarded_client():  # noqa: ANN202 - an httpx(2) Client
            client = previous()
            hooks = client.event_hooks
            client.event_hooks = {"request": [*hooks.get("request", []), _on_request],
                                  "response": [*hooks.get("response", []), _on_response]}
            return client

        set_client_factory(guarded_client)
        for name in ("huggingface_hub.utils._http", "huggingface_hub.file_download", "huggingface_hub.hf_api"):
            logging.getLogger(name).addFilter(_Redacting())  # its retry warnings name the URL
        _done.append(True)
