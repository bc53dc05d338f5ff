"""`fix --out DIR`: a serving-ready copy of an adapter, the original untouched.

The copy holds adapter_config.json rewritten exactly as `fix` would (ops/fix.plan + new_text) and every
other regular file at the adapter's top level (weights, tokenizer files, README), copied, or hard-linked
with `link` where the filesystem allows. Subdirectories (checkpoint-*/) are not part of what an engine
loads and are left out. The copy is built in a staging directory beside DIR (io/staging.staged), checked
there with the same peft and engine, and renamed into place only when that check finds no error: DIR
never holds half a copy, nor a copy that would still fail.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.files import copy_inside, escapes
from peftdoctor.io.staging import check_out, staged
from peftdoctor.model.adapter import CONFIG_NAME, Adapter
from peftdoctor.model.findings import Report, Severity
from peftdoctor.ops.check import check, server_settings
from peftdoctor.ops.fix import Plan, new_text, plan

# A hard link fails across filesystems (EXDEV) or where links are not allowed (EPERM on some mounts,
# protected_hardlinks for another user's file); the file is copied instead.
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES})


@dataclass(frozen=True)
class FixedCopy:
    """What `fix --out` did: the plan, where the copy is (None: nothing was written), the files it holds,
    those hard-linked to the source rather than copied, the check of the copy (None when the plan was
    refused and nothing was built), and what of the source was left out, with why."""

    plan: Plan
    out: Optional[Path]
    files: tuple[str, ...] = ()
    linked: tuple[str, ...] = ()
    after: Optional[Report] = None
    left_out: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()  # what was cleaned up beside `out`: the staging directories of killed runs

    @property
    def written(self) -> bool:
        return self.out is not None

    @property
    def errors(self) -> tuple[str, ...]:
        """Why nothing was written: the refusals, or the errors the check of the copy still found."""
        if self.plan.refused:
            return tuple(f"{r.key}: {r.reason}" for r in self.plan.refusals)
        found = self.after.findings if self.after is not None else ()
        return tuple(f"{f.code} {f.message}" for f in found if f.severity is Severity.ERROR)


class _StillBroken(Exception):
    """Raised inside the staging block to discard a copy whose check still finds errors."""


def adapter_files(adapter: Adapter) -> tuple[list[str], list[tuple[str, str]]]:
    """The files that make up the adapter (regular files at its top level, symlinks to files inside its
    roots included), and the entries left out with why: subdirectories and what the file rules refuse."""
    names, left_out = [], []
    for name in sorted(os.listdir(adapter.directory)):
        entry = adapter.directory / name
        if name in adapter.refused:
            left_out.append((name, adapter.refused[name]))
        elif entry.is_dir():
            left_out.append((name, "is a subdirectory (a checkpoint?); only the top-level files are the adapter"))
        elif entry.is_file():
            names.append(name)
        else:
            left_out.append((name, "is a dangling symlink"))
    return names, left_out


def _place(source: Path, directory: Path, target: Path, link: bool) -> bool:
    """Put `source` (an entry of `directory`) at `target`: a hard link to the file it is (a hub cache
    entry's blob, not the symlink) when `link` and the filesystem allow it, else a copy. True: linked."""
    if link and not escapes(directory, source.name):
        try:
            os.link(os.path.realpath(source), target)
            return True
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
    copy_inside(source, target)
    return False


def _write_config(target: Path, text: str) -> None:
    with open(target, "x", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def fix_copy(path: Union[str, Path, Adapter], out: Union[str, Path], peft: Optional[str] = None, *,
             serve: Optional[str] = None, force: bool = False, link: bool = False,
             max_lora_rank: Optional[int] = None) -> FixedCopy:
    """Write the adapter at `path` (a directory, a cached Hub repo id, or an Adapter already read), fixed
    for `peft` and the engine `serve`, to the new directory `out`, and check the copy there. Nothing is
    written when the plan is refused or the copy still has errors (FixedCopy.out is None, .errors says why).
    UnusableInput for an `out` that exists and is not an empty directory, or an adapter that cannot be read."""
    server_settings(serve, max_lora_rank)  # a usage error before anything is read
    destination = check_out(str(out))
    adapter = path if isinstance(path, Adapter) else open_adapter(str(path))
    if adapter.origin == "hub":
        raise UnusableInput(f"{adapter.display}: read on the Hub without its files; download it first "
                            "(huggingface-cli download) to make a copy")
    the_plan = plan(adapter, peft=peft, force=force, serve=serve, max_lora_rank=max_lora_rank)
    names, left_out = adapter_files(adapter)
    if the_plan.refused:
        return FixedCopy(the_plan, None, left_out=tuple(left_out))
    linked: list[str] = []
    notes: list[str] = []
    after: Optional[Report] = None
    try:
        with staged(destination, say=notes.append) as staging:
            for name in names:
                if name == CONFIG_NAME:
                    _write_config(staging / name, new_text(the_plan))
                elif _place(adapter.directory / name, adapter.directory, staging / name, link):
                    linked.append(name)
            after = check(str(staging), peft=peft, serve=serve, max_lora_rank=max_lora_rank)
            after = dataclasses.replace(after, path=str(destination))
            if any(f.severity is Severity.ERROR for f in after.findings):
                raise _StillBroken
    except _StillBroken:
        return FixedCopy(the_plan, None, tuple(names), (), after, tuple(left_out), tuple(notes))
    return FixedCopy(the_plan, destination, tuple(names), tuple(linked), after, tuple(left_out), tuple(notes))
