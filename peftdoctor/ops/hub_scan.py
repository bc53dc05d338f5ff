"""`scan --hub AUTHOR` and `scan --from-file FILE`: check many Hub repos at once and summarise them as a local
scan does (ops/scan.py's ScanReport). Each repo costs its config and a range read of its weights header;
a bounded pool of threads overlaps the waits.

Memory: the listing is read a page at a time as the pool takes repos, and at most a few pools' worth of
repos wait in the queue; with `light`, each report is kept as its path and its (code, severity) pairs
only (a few hundred bytes; the full report goes to the spool for JSON). One repo's failure, whatever it
is, is that repo's `unusable` entry (PD008), never the scan's end. The threads are daemons sharing one io/hub_guard.py scope:
Ctrl-C cancels every request in flight and the command ends at once, without waiting for them.
"""
from __future__ import annotations

import functools
import json
import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TextIO, Union

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import FileRefused, read_limited
from peftdoctor.io.locate import is_repo_ref, split_ref
from peftdoctor.model.findings import Finding, Report, Severity
from peftdoctor.ops.check import check, choose_target
from peftdoctor.ops.scan import ScanReport, as_dict

WORKERS = 16
MAX_LIST_BYTES = 16 * 1024 * 1024  # a list of repo ids: a few MB at the very most
_POLL = 0.2  # seconds the main thread waits on a queue at a time, so that Ctrl-C is seen at once

# (repos done, repos in all or None while the listing goes on, the repo just done, a note about it or None);
# called from the caller's thread.
Progress = Callable[[int, Optional[int], str, Optional[str]], None]
# A repo id ("owner/name[@revision]"), a checked listing entry (io.hub.Listed), or a listing entry that could
# not be used: (name, one-line reason).
Repo = Union[str, Any, tuple[str, str]]


def scan_hub(author: str, peft: Optional[str] = None, workers: int = WORKERS,
             progress: Optional[Progress] = None, spool: Optional[str] = None, light: bool = False) -> ScanReport:
    """Check every adapter repo of `author` (a user or an organisation) on the Hub (see scan_repos)."""
    choose_target(peft)  # a bad --peft fails before any request
    from peftdoctor.io import hub_guard
    from peftdoctor.io.hub import list_adapter_repos  # huggingface_hub only when the Hub is asked

    shared = hub_guard.new_scope()
    return scan_repos(f"{author} (on the Hub)", list_adapter_repos(author, shared), peft, workers, progress,
                      spool, light, shared)


def read_repo_list(path: str) -> list[str]:
    """Repo ids from a file, one per line ("#" starts a comment); UnusableInput naming the first bad line."""
    try:
        text = read_limited(Path(path), MAX_LIST_BYTES).decode("utf-8-sig")
    except FileRefused as exc:
        raise UnusableInput(str(exc)) from None
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UnusableInput(f"{path}: not UTF-8 text") from None
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        ref = line.split("#", 1)[0].strip()
        if ref and not is_repo_ref(ref):
            raise UnusableInput(f"{path}:{number}: {ref!r} is not a repo id (OWNER/NAME or OWNER/NAME@REVISION)")
        if ref:
            try:
                split_ref(ref)  # a revision that could not be a branch, tag or commit
            except UnusableInput as exc:
                raise UnusableInput(f"{path}:{number}: {exc}") from None
            refs.append(ref)
    return list(dict.fromkeys(refs))  # each repo once, in the file's order


def scan_repos(label: str, repos: Iterable[Repo], peft: Optional[str] = None, workers: int = WORKERS,
               progress: Optional[Progress] = None, spool: Optional[str] = None, light: bool = False,
               within: Any = None) -> ScanReport:
    """Check each repo with `workers` threads; reports and unusable repos sorted by repo id. `repos` is read
    as the threads take them (a listing page at a time). With `spool` (a file path), each full report goes
    there as one JSON line and the ScanReport keeps it without its compatibility table, as ops/scan.py does;
    with `light` too, only what the text summary and the exit code read (path, codes, severities).
    `within`: the io/hub_guard.py scope of every request (a new one when None)."""
    choose_target(peft)
    from peftdoctor.io import hub_guard

    shared = within or hub_guard.new_scope()
    todo: queue.Queue = queue.Queue(maxsize=2 * max(1, workers))
    done: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_worker, args=(todo, done, peft, shared), daemon=True,
                                name=f"peftdoctor-hub-{i}") for i in range(max(1, workers))]
    for thread in threads:
        thread.start()
    kept = _Kept(spool, light)
    try:
        for repo in repos:
            if isinstance(repo, tuple):  # a listing entry the Hub answered oddly: unusable without a request
                kept.unlisted += 1
                kept.add(repo[0], None, repo[1], None, progress, None)
                continue
            while not _put(todo, repo):
                kept.take(done, progress, None)
            kept.submitted += 1
            kept.take(done, progress, None, block=False)
        while kept.finished < kept.submitted:
            kept.take(done, progress, kept.submitted + kept.unlisted)
        if progress is not None and not kept.ended:  # the last result came before the listing's end
            count = kept.submitted + kept.unlisted
            progress(count, count, "", None)
    except BaseException:
        shared.cancel()  # Ctrl-C (or a failed listing): requests in flight stop; daemon threads never hold exit
        raise
    finally:
        for _ in threads:
            _put(todo, None, wait=False)
        kept.close()
    return kept.result(label)


def _put(todo: queue.Queue, item: Any, wait: bool = True) -> bool:
    try:
        todo.put(item, timeout=_POLL if wait else None, block=wait)
    except queue.Full:
        return False
    return True


def _worker(todo: queue.Queue, done: queue.Queue, peft: Optional[str], shared: Any) -> None:
    while True:
        repo = todo.get()
        if repo is None:
            return
        done.put(_check_one(repo, peft, shared))


class _Kept:
    """What the scan keeps of each result (the report, light or without its compatibility table with a
    spool; or the unusable line), and the counts that say when the scan is done."""

    def __init__(self, spool: Optional[str], light: bool) -> None:
        self.spool, self.light = spool, light
        self.lines: Optional[TextIO] = open(spool, "w", encoding="utf-8") if spool else None  # noqa: SIM115
        self.reports: list[Report] = []
        self.unusable: list[tuple[str, str]] = []
        self.submitted = self.finished = self.unlisted = 0
        self.ended = False  # whether progress was last told "all done" with the total

    def take(self, done: queue.Queue, progress: Optional[Progress], total: Optional[int],
             block: bool = True) -> None:
        """Collect the results ready (with block, wait up to _POLL for one)."""
        try:
            result = done.get(timeout=_POLL) if block else done.get_nowait()
        except queue.Empty:
            return
        while True:
            self.finished += 1
            self.add(*result, progress, total)
            try:
                result = done.get_nowait()
            except queue.Empty:
                return

    def add(self, ref: str, report: Optional[Report], reason: Optional[str], note: Optional[str],
            progress: Optional[Progress], total: Optional[int]) -> None:
        if report is not None:
            if self.lines is not None:
                self.lines.write(json.dumps(as_dict(report), sort_keys=True) + "\n")
                report = replace(report, compatibility=())
            self.reports.append(_light(report) if self.light else report)
        else:
            self.unusable.append((ref, reason or "unusable"))
        if progress is not None:
            count = len(self.reports) + len(self.unusable)
            self.ended = count == total
            progress(count, total, ref, note)

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()

    def result(self, label: str) -> ScanReport:
        """Sorted by repo id; the spool rewritten in that order (read back one line at a time)."""
        order = sorted(range(len(self.reports)), key=lambda i: self.reports[i].path)
        if self.spool is not None and order != list(range(len(order))):
            _reorder(self.spool, order)
        return ScanReport(label, tuple(self.reports[i] for i in order), tuple(sorted(self.unusable)),
                          spool=self.spool)


@functools.lru_cache(maxsize=None)
def _code_only(code: str, severity: Severity) -> Finding:
    return Finding(code, severity, "", "")  # one shared object per (code, severity) for every light report


def _light(report: Report) -> Report:
    """What the text summary, the counts and the exit code read of a report, and nothing else."""
    codes = sorted({(f.code, f.severity) for f in report.findings}, key=lambda pair: (pair[0], pair[1].rank))
    return Report(report.path, None, report.peft_target, tuple(_code_only(c, s) for c, s in codes),
                  kind=report.kind)


def _reorder(spool: str, order: list[int]) -> None:
    """Rewrite the spool's lines in `order` (line indexes), holding only their offsets in memory."""
    offsets, at = [], 0
    with open(spool, "rb") as lines:
        for line in lines:
            offsets.append((at, len(line)))
            at += len(line)
    sorted_path = spool + ".sorted"
    with open(spool, "rb") as source, open(sorted_path, "wb") as target:
        for i in order:
            source.seek(offsets[i][0])
            target.write(source.read(offsets[i][1]))
    Path(sorted_path).replace(spool)


def _check_one(repo: Repo, peft: Optional[str], shared: Any
               ) -> tuple[str, Optional[Report], Optional[str], Optional[str]]:
    """(repo, its report or None, why not, a note): never raises, whatever the Hub answered."""
    from peftdoctor.io import hub_guard
    from peftdoctor.io.hub import open_hub_adapter

    ref = repo if isinstance(repo, str) else repo.repo_id
    try:
        with hub_guard.scope(shared):
            adapter = open_hub_adapter(ref, listed=None if isinstance(repo, str) else repo)
            return ref, check(adapter, peft=peft), None, adapter.note
    except UnusableInput as exc:
        return ref, None, str(exc), None
    except KeyboardInterrupt:  # cancelled: the scan is ending, this result is not kept
        return ref, None, "interrupted", None
    except Exception as exc:  # noqa: BLE001 - a bug of ours on one repo must not lose the others
        return ref, None, f"{ref}: internal error: {type(exc).__name__} (please report this)", None
