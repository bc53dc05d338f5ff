"""What the CLI needs around the heavy commands (verify, merge): the extra check, progress, quiet libraries.

Nothing here imports torch, transformers or peft: the extra is looked for with find_spec first,
so the light install (pip install peftdoctor, pre-commit) ends in one line naming the extra.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from contextlib import contextmanager, nullcontext, redirect_stdout
from typing import Any, Callable, Iterator, Optional

from peftdoctor.errors import MissingExtra
from peftdoctor.render.terminal import line

HEAVY_MODULES = ("torch", "transformers", "peft")
# Loggers that report on optional kernels verify does not use; verify tests what it needs itself
# (a 4-bit layer is run before a quantized base is trusted). Kept at ERROR so a warning of theirs
# ("Failed to load CPU gemm_4bit_forward ...") does not read like a verdict of ours.
NOISY_LOGGERS = ("bitsandbytes",)


def require_extra(extra: str = "verify", modules: tuple[str, ...] = HEAVY_MODULES) -> None:
    missing = tuple(m for m in modules if importlib.util.find_spec(m) is None)
    if missing:
        raise MissingExtra(missing, extra)


@contextmanager
def library_output_to_stderr() -> Iterator[None]:
    """While the heavy libraries run, whatever they print (Python or native code) goes to stderr, so
    that stdout holds only our report, and their optional-kernel warnings are kept quiet."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stdout.flush()
    saved = _dup_stdout()
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _dup_stdout() -> Optional[int]:
    """Point file descriptor 1 at stderr (native code writes there directly); the saved copy restores it."""
    try:
        saved = os.dup(1)
    except OSError:
        return None  # no stdout descriptor at all: nothing to protect
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved


def progress(enabled: bool) -> tuple[Any, Optional[Callable[[str], None]]]:
    """A rich spinner on stderr that shows the current step; nothing at all for machine output."""
    if not enabled:
        return nullcontext(), None
    from rich.console import Console
    from rich.text import Text  # plain text: a path holding "[bold]" is not markup

    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs (CI) get one line per step instead of spinner frames.
        return nullcontext(), lambda message: console.print(f"peftdoctor: {line(message)}", highlight=False,
                                                            markup=False)
    status = console.status("peftdoctor verify")
    return status, lambda message: status.update(Text(f"peftdoctor verify: {line(message)}"))


def say(message: str) -> None:
    print(f"peftdoctor: {line(message)}", file=sys.stderr)
