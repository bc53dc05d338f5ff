"""The body of the `merge` CLI command: call stream_merge(), print, return the exit code.

Exit codes: 0 merged; 1 refused (a valid adapter this command cannot merge exactly: not LoRA, an
option peft merges only on the whole model, NaN in a merged weight); 2 unusable input or a failed
write (missing or damaged base/adapter, --out exists, disk full). Errors are one line on stderr.
Nothing heavy is imported here: stream_merge imports torch only once the inputs have been read.
"""
from __future__ import annotations

import sys
from typing import Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.merge.plan import MergeRefused
from peftdoctor.merge.result import one_line, render_json, render_text
from peftdoctor.merge.run import stream_merge
from peftdoctor.merge.stream import WriteFailed

EXIT_MERGED, EXIT_REFUSED, EXIT_UNUSABLE = 0, 1, 2


def merge_command(adapter: str, base: Optional[str], out: str, dtype: str = "auto", device: str = "cpu",
                  fmt: str = "text") -> int:
    if fmt not in ("text", "json"):
        print(f"peftdoctor: --format {fmt!r}: use text or json", file=sys.stderr)
        return EXIT_UNUSABLE
    progress = (lambda message: print(f"peftdoctor: {message}", file=sys.stderr)) if fmt == "text" else None
    try:
        report = stream_merge(adapter, base, out, dtype=dtype, device=device, progress=progress)
    except MergeRefused as exc:
        print(f"peftdoctor: merge refused: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_REFUSED
    except (UnusableInput, WriteFailed) as exc:
        print(f"peftdoctor: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:  # reading a base file failed in a way the stream did not foresee
        print(f"peftdoctor: {one_line(f'{exc.filename or adapter}: {exc.strerror or exc}')}", file=sys.stderr)
        return EXIT_UNUSABLE
    sys.stdout.write(render_json(report) if fmt == "json" else render_text(report))
    sys.stdout.flush()
    return EXIT_MERGED
