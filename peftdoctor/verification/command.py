"""`verify_command`: the `verify` command line as a function (for scripts and tests).

It runs the CLI itself (peftdoctor.cli.app), which prints the report on stdout, progress and errors
on stderr, and picks the exit code: 0 verified (load_only: the whole adapter applies), 1 failed or not
verified, 2 unusable input or the light install (torch/transformers/peft missing).
"""
from __future__ import annotations

from typing import Optional


def verify_command(adapter: str, base: Optional[str], device: str, dtype: str, out: Optional[str], fmt: str,
                   tolerance: Optional[float], trust_remote_code: bool, merged: Optional[str] = None,
                   load_only: bool = False) -> int:
    from peftdoctor.cli.app import run

    argv = ["verify", adapter, "--device", device, "--dtype", dtype, "--format", fmt]
    argv += ["--base", base] if base is not None else []
    argv += ["--out", out] if out is not None else []
    argv += ["--tolerance", repr(tolerance)] if tolerance is not None else []
    argv += ["--merged", merged] if merged is not None else []
    argv += ["--load-only"] if load_only else []
    return run(argv + (["--trust-remote-code"] if trust_remote_code else []))
