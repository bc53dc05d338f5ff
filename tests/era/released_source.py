"""peft's own functions, taken at test time from the released wheels (never copied into this repo).

For the releases the suite has no side-by-side environment for, the differential tests still want
peft's own code: `peft_function(version, name)` downloads that release's wheel from the package index
(once, cached under ~/.cache/peftdoctor/wheels), finds the function in the release's source with `ast`
(a module-level function, or a method such as 0.5.0's LoraModel._check_target_module_exists), and
executes it with the module-level names it uses (helpers, constants) taken from the same release.
"""
from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any, Callable

CACHE = Path(os.environ.get("PEFTDOCTOR_WHEEL_CACHE", Path.home() / ".cache" / "peftdoctor" / "wheels"))
# Where each release keeps the names the target matcher uses, searched in this order.
MODULES = ("peft/tuners/tuners_utils.py", "peft/tuners/lora.py", "peft/utils/other.py", "peft/utils/constants.py")


@functools.lru_cache(maxsize=None)
def wheel(version: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"peft-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-d", str(CACHE), f"peft=={version}"], check=True)
        found = sorted(CACHE.glob(f"peft-{version}-*.whl"))
    return found[0]


@functools.lru_cache(maxsize=None)
def _sources(version: str) -> dict[str, tuple[str, ast.Module]]:
    with zipfile.ZipFile(wheel(version)) as archive:
        names = set(archive.namelist())
        return {m: (text, ast.parse(text)) for m in MODULES if m in names
                for text in [archive.read(m).decode("utf-8")]}


def _definitions(version: str) -> dict[str, str]:
    """Every module-level function, class and simple assignment of MODULES, by name (first module wins),
    plus the methods of classes under their own name (for functions that were methods in old releases)."""
    found: dict[str, str] = {}
    for text, tree in _sources(version).values():
        for node in tree.body:
            names = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                     [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else [])
            for name in names:
                found.setdefault(name, ast.get_source_segment(text, node) or "")
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in item.decorator_list)
                        found.setdefault(f"{node.name}.{item.name}" + ("" if static else ".bound"), textwrap.dedent(
                            ast.get_source_segment(text, item) or ""))
    return found


def peft_function(version: str, name: str) -> Callable[..., Any]:
    """The release's own `name` ("check_target_module_exists", or "LoraModel._check_target_module_exists"),
    executed with the module-level names it refers to; a method is called with None for its `self`."""
    definitions = _definitions(version)
    bound = name not in definitions and f"{name}.bound" in definitions
    if bound:
        definitions[name] = definitions[f"{name}.bound"]
    namespace: dict[str, Any] = {"re": re, "__name__": f"peft_{version}"}
    wanted, done = [name], set()
    while wanted:
        current = wanted.pop()
        if current in done or current not in definitions:
            continue
        done.add(current)
        source = definitions[current]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and node.id in definitions and node.id not in done:
                wanted.append(node.id)
    for current in sorted(done, key=lambda n: n != name):  # helpers first, the function itself last
        exec(compile(definitions[current], f"<peft {version} {current}>", "exec"), namespace)  # noqa: S102
    function = namespace[name.rsplit(".", 1)[-1]]
    return (lambda *args: function(None, *args)) if bound else function
