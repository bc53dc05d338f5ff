"""`scan --hub AUTHOR` and `scan --from-file FILE`: check many Hub repos at once and summarise them as a local
scan does (ops/scan.py's ScanReport). Each repo costs its config and a range read of its weights header;
a bounded pool overlaps the waits, and at most a few pools' worth of checks are in flight at any time."""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import FileRefused, read_limited
from peftdoctor.io.locate import is_repo_ref
from peftdoctor.model.findings import Report
from peftdoctor.ops.check import check, choose_target
from peftdoctor.ops.scan import ScanReport

WORKERS = 16
MAX_LIST_BYTES = 16 * 1024 * 1024  # a list of repo ids: a few MB at the very most

# (repos done, repos in all, the repo just done, a note about it or None); called from the caller's thread.
Progress = Callable[[int, int, str, Optional[str]], None]
# A repo id ("owner/name[@revision]") or the listing's entry for it (a huggingface_hub ModelInfo).
Repo = Union[str, Any]


def scan_hub(author: str, peft: Optional[str] = None, workers: int = WORKERS,
             progress: Optional[Progress] = None) -> ScanReport:
    """Check every adapter repo of `author` (a user or an organisation) on the Hub."""
    choose_target(peft)  # a bad --peft fails before any request
    from peftdoctor.io.hub import list_adapter_repos  # huggingface_hub only when the Hub is asked

    return scan_repos(f"{author} (on the Hub)", list_adapter_repos(author), peft, workers, progress)


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
            refs.append(ref)
    return list(dict.fromkeys(refs))  # each repo once, in the file's order


def scan_repos(label: str, repos: Sequence[Repo], peft: Optional[str] = None, workers: int = WORKERS,
               progress: Optional[Progress] = None) -> ScanReport:
    """Check each repo with `workers` threads; reports and unusable repos sorted by repo id."""
    choose_target(peft)
    reports: list[Report] = []
    unusable: list[tuple[str, str]] = []
    pending: set[Future] = set()

    def collect(done: set[Future]) -> None:
        for future in done:
            ref, report, reason, note = future.result()
            if report is not None:
                reports.append(report)
            else:
                unusable.append((ref, reason or "unusable"))
            if progress is not None:
                progress(len(reports) + len(unusable), len(repos), ref, note)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="peftdoctor-hub") as pool:
        for repo in repos:
            pending.add(pool.submit(_check_one, repo, peft))
            if len(pending) >= 4 * workers:  # bounded: never the whole list of futures at once
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        collect(wait(pending).done)
    return ScanReport(label, tuple(sorted(reports, key=lambda r: r.path)), tuple(sorted(unusable)))


def _check_one(repo: Repo, peft: Optional[str]) -> tuple[str, Optional[Report], Optional[str], Optional[str]]:
    from peftdoctor.io.hub import open_hub_adapter

    ref = repo if isinstance(repo, str) else repo.id
    try:
        adapter = open_hub_adapter(ref, info=None if isinstance(repo, str) else repo)
        return ref, check(adapter, peft=peft), None, adapter.note
    except UnusableInput as exc:
        return ref, None, str(exc), None
