"""Run under one transformers release (its env first on PYTHONPATH): for each peft-only directory given,
import peft and PeftModel in a forked child and print {peft directory: None or the error text}.

What does not depend on the peft release is imported once in the parent: torch, accelerate (the base venv's,
for every pair) and transformers with its model base classes, which `import peft` imports first anyway; each
child then imports only peft, from the same state `python -c "import peft"` reaches once transformers is in.
Where transformers itself does not import, each child meets that error as `import peft` would.
"""
from __future__ import annotations

import json
import os
import re
import sys
import traceback
import warnings

import torch  # noqa: F401 - shared by every child: imported once

warnings.simplefilter("ignore")
try:
    import transformers  # noqa: F401
    from transformers import PreTrainedModel  # noqa: F401
except Exception:  # noqa: BLE001 - the children meet it again, through peft
    pass

STRIP = re.compile(r"\s*\((?:/[^()]*)\)")  # "(/root/.cache/.../__init__.py)": where this machine keeps it


def _probe(directory: str) -> str | None:
    sys.path.insert(0, directory)
    warnings.simplefilter("ignore")
    try:
        import peft  # noqa: F401
        from peft import PeftModel  # noqa: F401
    except BaseException as exc:  # noqa: BLE001 - the text is the measurement
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return " ".join(STRIP.sub("", last).split())
    return None


def main(directories: list[str]) -> None:
    answers = {}
    for directory in directories:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            try:
                text = json.dumps(_probe(directory))
            except BaseException as exc:  # noqa: BLE001
                text = json.dumps(f"{type(exc).__name__}: {exc}")
            os.write(write, text.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            got = pipe.read()
        os.waitpid(pid, 0)
        answers[directory] = json.loads(got) if got else "the interpreter died importing peft"
    print(json.dumps(answers))


if __name__ == "__main__":
    main(sys.argv[1:])
