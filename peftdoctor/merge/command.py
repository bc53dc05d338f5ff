"""`merge_command`: the `merge` command line as a function (for scripts, bench/ and tests).

It runs the CLI itself (peftdoctor.cli.app), which is the one place that prints and picks the exit
code: 0 merged; 1 refused (a valid adapter this command cannot merge exactly: not LoRA, an option
peft merges only on the whole model, NaN in a merged weight); 2 unusable input, a failed write, or
the light install (torch/transformers/peft missing). Errors are one line on stderr.
"""
from __future__ import annotations

from typing import Optional


def merge_command(adapter: str, base: Optional[str], out: str, dtype: str = "auto", device: str = "cpu",
                  fmt: str = "text", trust_remote_code: bool = False) -> int:
    from peftdoctor.cli.app import run

    argv = ["merge", adapter, "--out", out, "--dtype", dtype, "--device", device, "--format", fmt]
    return run(argv + (["--base", base] if base is not None else [])
               + (["--trust-remote-code"] if trust_remote_code else []))
