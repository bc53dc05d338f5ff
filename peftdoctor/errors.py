"""The exceptions that end a command, and the one table that maps each to an exit code.

Every message is one line for the user. Operations raise these; only the CLI (cli/app.py main)
catches them, prints `peftdoctor: <message>` on stderr and exits with the code below.
"""
from __future__ import annotations

import importlib
import signal
import threading
from types import ModuleType
from typing import Any, Optional


class PeftdoctorError(Exception):
    """A condition the user can act on; str() is one line."""


class UsageError(PeftdoctorError):
    """The command line asks for something the command cannot do (a format it cannot write, ...)."""


class UnusableInput(PeftdoctorError):
    """The input cannot be checked at all (exit 2); the message is one line for the user."""


class WriteRefused(PeftdoctorError):
    """Nothing was written; the message says why in one line."""


class WriteFailed(PeftdoctorError):
    """Writing the output failed (disk full, permissions); nothing was left at --out. One line."""


class MergeRefused(PeftdoctorError):
    """The adapter is valid but cannot be stream-merged (exit 1); the message is one line."""


class MissingExtra(PeftdoctorError):
    """The command needs packages the light install lacks (torch, transformers, peft)."""

    def __init__(self, missing: tuple[str, ...], extra: str = "verify") -> None:
        self.missing, self.extra = missing, extra
        super().__init__(f"needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
                         f'pip install "peftdoctor[{extra}]"')


EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
PATH_SHOWN = 300  # characters of a path an error line quotes; one past PATH_MAX would hide the reason after it

# exception type -> (exit code, what the one line starts with). Looked up along the exception's MRO,
# so a subclass (io.files.FileRefused is an OSError) takes its nearest entry.
EXIT_CODES: dict[type[BaseException], tuple[int, str]] = {
    MergeRefused: (EXIT_FINDINGS, "merge refused: "),
    UsageError: (EXIT_UNUSABLE, ""),
    UnusableInput: (EXIT_UNUSABLE, ""),
    WriteRefused: (EXIT_UNUSABLE, ""),
    WriteFailed: (EXIT_UNUSABLE, ""),
    MissingExtra: (EXIT_UNUSABLE, ""),
    OSError: (EXIT_UNUSABLE, ""),  # a read the operation did not foresee failing (EIO, EACCES, ...)
    KeyboardInterrupt: (EXIT_INTERRUPTED, ""),
}


def exit_code(exc: BaseException) -> Optional[int]:
    """The exit code for `exc`, or None for an exception no table entry covers (a bug of ours)."""
    entry = _entry(exc)
    return entry[0] if entry else None


def one_line(exc: BaseException) -> str:
    """What to print after `peftdoctor: ` for `exc`: its table prefix and the first line of its message."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    entry = _entry(exc)
    text = os_reason(exc) if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (entry[1] if entry else "") + (message_line(text) or type(exc).__name__)


def os_reason(exc: OSError, name: object = None) -> str:
    """"FILE: reason" for a failed system call: `name`, else the file the exception names, clipped so
    that the reason survives a path of any length (str(OSError) reads "[Errno 36] ..." and may name none)."""
    where = name if name is not None else exc.filename
    reason = exc.strerror or str(exc)
    return f"{clip(str(where), PATH_SHOWN)}: {reason}" if where is not None else reason


def message_line(text: str, limit: int = 500) -> str:
    """The line of a (possibly multi-line) error message to show: the first non-empty one, joined with the
    next when it only announces a list ("Error(s) in loading state_dict for PeftModel:" then the size
    mismatch), at most `limit` characters: a longer one keeps its start and its end, where "PATH: reason"
    puts the reason (a path over PATH_MAX would push it out)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    shown = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    if len(shown) <= limit:
        return shown
    head = limit // 2
    return shown[:head - 3] + "..." + shown[len(shown) - (limit - head):]


def clip(text: str, limit: int) -> str:
    """`text`, or its first limit - 3 characters and "..." when it is longer than `limit`: how a
    message or finding quotes a value that may be any size."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def import_holding_interrupts(name: str) -> ModuleType:
    """importlib.import_module(name), with Ctrl-C held until the import is done and raised after it.
    torch's C extension initialiser imports Python modules and clears whatever exception they raise, so
    a KeyboardInterrupt arriving during `import torch` was lost and the command ran on to completion.
    Only the main thread can hold signals; elsewhere this is a plain import."""
    if threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)
    caught: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        module = importlib.import_module(name)
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
    return module


def _entry(exc: BaseException) -> Optional[tuple[int, str]]:
    return next((EXIT_CODES[kind] for kind in type(exc).__mro__ if kind in EXIT_CODES), None)
