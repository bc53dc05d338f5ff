"""The body of the `verify` CLI command: call verify(), print, return the exit code.

Kept out of cli.py so that the CLI stays one typer declaration; this module imports nothing heavy.
The report goes to stdout; progress (text format only) and errors go to stderr.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.verification.result import VerifyReport, render_json, render_text
from peftdoctor.verification.run import verify

EXIT_VERIFIED, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def exit_code(report: VerifyReport) -> int:
    """0 only when verified: a run that could not verify (skipped) must not pass a CI gate."""
    return EXIT_VERIFIED if report.verdict == "verified" else EXIT_FAILED


def verify_command(adapter: str, base: Optional[str], device: str, dtype: str, out: Optional[str], fmt: str,
                   tolerance: Optional[float], trust_remote_code: bool) -> int:
    if fmt not in ("text", "json"):
        print(f"peftdoctor: --format {fmt!r}: use text or json", file=sys.stderr)
        return EXIT_UNUSABLE
    display, progress = _progress(fmt == "text")
    try:
        with display:
            report = verify(adapter, base=base, device=device, dtype=dtype, out=out, tolerance=tolerance,
                            trust_remote_code=trust_remote_code, progress=progress)
    except UnusableInput as exc:
        print(f"peftdoctor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    sys.stdout.write(render_json(report) if fmt == "json" else render_text(report))
    sys.stdout.flush()
    return exit_code(report)


def _progress(enabled: bool) -> tuple[Any, Optional[Callable[[str], None]]]:
    """A rich spinner on stderr that shows the current step; nothing at all for machine output."""
    if not enabled:
        return nullcontext(), None
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs (CI) get one line per step instead of spinner frames.
        return nullcontext(), lambda message: console.print(f"peftdoctor: {message}", highlight=False)
    status = console.status("peftdoctor verify")
    return status, lambda message: status.update(f"peftdoctor verify: {message}")
