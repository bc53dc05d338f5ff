"""Generate peftdoctor/messages/catalogue.json: the error and warning messages of the real releases.

Each release's wheel is fetched with `pip download --no-deps` (cached under
~/.cache/peftdoctor/wheels) and every selected .py file in it is ast-parsed for `raise X(...)`,
`warnings.warn(...)` and `logger.<level>(...)` messages (peftdoctor/messages/templates.py).
safetensors words its errors in Rust: its wheel's binary is searched for the fixed fragments in
SAFETENSORS_PROBES, and a fragment counts for a release only where that binary holds it.
Identical templates of one package are one entry with the releases that emit them; each entry
gets the verdict of peftdoctor/messages/codes.py: a finding code, or none (not an adapter problem), and
the area rule that gave it when no MAP row names the message. Output is byte-for-byte stable.

    python scripts/generate_messages.py             # every package and release below
    python scripts/generate_messages.py --check     # exit 1 if the committed file differs
    python scripts/generate_messages.py --only peft==0.13.2 --out FILE   # one release (tests)
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from peftdoctor.messages import codes  # noqa: E402
from peftdoctor.messages.templates import (  # noqa: E402
    MIN_LITERAL,
    Template,
    longest_literal,
    module_constants,
    parse,
    render,
    templates_of,
)

OUT = ROOT / "peftdoctor" / "messages" / "catalogue.json"
CACHE = Path(os.environ.get("PEFTDOCTOR_WHEEL_CACHE", Path.home() / ".cache" / "peftdoctor" / "wheels"))


def _peft_versions() -> list[str]:
    names = sorted(p.name[len("peft-"):-len(".json")] for p in (ROOT / "schemas").glob("peft-*.json"))
    from packaging.version import Version
    return sorted(names, key=Version)


def _engine_versions(engine: str, every: int) -> list[str]:
    """Every `every`-th release the engine table was read from, and its newest."""
    checked = json.loads((ROOT / "peftdoctor" / "engines" / f"{engine}.json").read_text())["checked_releases"]
    from packaging.version import Version
    checked = [v for v in checked if Version(v) >= Version("0.3")]  # vLLM before 0.3.0 has no LoRA
    picked = checked[::every]
    return picked if picked[-1] == checked[-1] else [*picked, checked[-1]]


# What is read of each package: the releases, and which files (path -> keep) and templates count.
TRANSFORMERS_FILES = ("transformers/integrations/peft.py", "transformers/modeling_utils.py",
                      "transformers/configuration_utils.py", "transformers/utils/hub.py",
                      "transformers/utils/peft_utils.py", "transformers/models/auto/auto_factory.py",
                      "transformers/models/auto/configuration_auto.py",
                      "transformers/generation/configuration_utils.py")


def _lora_only(template: Template) -> bool:
    return "lora" in template.file.lower() or "lora" in template.text.lower()


def _about_adapters(template: Template) -> bool:
    """A wrapper's message about adapters: its file or its text names LoRA, an adapter or peft."""
    return any(w in template.file.lower() or w in template.text.lower() for w in ("lora", "adapter", "peft"))


PACKAGES: dict[str, dict[str, Any]] = {
    "peft": {"versions": _peft_versions, "files": lambda p: p.startswith("peft/"), "keep": lambda t: True},
    "transformers": {"versions": lambda: ["4.28.1", "4.36.2", "4.44.2", "4.51.3", "4.57.1"],
                     "files": lambda p: p in TRANSFORMERS_FILES, "keep": lambda t: True},
    "bitsandbytes": {"versions": lambda: ["0.41.0", "0.42.0", "0.45.5"],
                     "files": lambda p: p.startswith("bitsandbytes/nn/") or p == "bitsandbytes/functional.py",
                     "keep": lambda t: True},
    "vllm": {"versions": lambda: _engine_versions("vllm", 6), "files": lambda p: p.startswith("vllm/"),
             "keep": _lora_only, "lora_files_only": True},
    "sglang": {"versions": lambda: _engine_versions("sglang", 7), "files": lambda p: p.startswith("sglang/"),
               "keep": _lora_only, "lora_files_only": True},
    # The wrappers users run: their own refusals around loading, merging and serving adapters.
    "unsloth": {"versions": lambda: ["2024.8", "2025.3.1", "2025.12.1", "2026.10.9"],
                "files": lambda p: p.startswith("unsloth/"), "keep": _about_adapters},
    "unsloth_zoo": {"versions": lambda: ["2025.3.1", "2025.12.1", "2026.10.9"],  # where Unsloth merges and saves
                    "files": lambda p: p.startswith("unsloth_zoo/"), "keep": _about_adapters},
    "llamafactory": {"versions": lambda: ["0.7.1", "0.8.3", "0.9.2", "0.9.5"],
                     "files": lambda p: p.startswith("llamafactory/"), "keep": _about_adapters},
    "axolotl": {"versions": lambda: ["0.19.0"],  # pip finds no wheel of 0.5.2, 0.8.1, 0.12.2 for these platforms
                "files": lambda p: p.startswith("axolotl/"), "keep": _about_adapters},
}

# safetensors' Rust Display texts (safetensors/src/tensor.rs, bindings/python/src/lib.rs), probed in
# each wheel's binary: only the releases whose binary holds a fragment list it.
SAFETENSORS_VERSIONS = ["0.3.3", "0.4.5", "0.5.3", "0.6.2", "0.8.0"]
SAFETENSORS_PROBES = ("Error while deserializing header: {reason}", "invalid JSON in header: {reason}",
                      "invalid UTF-8 in header: {reason}", "header too large", "header too small",
                      "invalid header length", "incomplete metadata, file not fully covered",
                      "HeaderTooLarge", "HeaderTooSmall", "InvalidHeaderDeserialization", "MetadataIncompleteBuffer")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The wheel tags releases were published under, oldest first: any one of them serves (only .py files
# and, for safetensors, the binary's strings are read; the wheel is never installed).
PLATFORMS = ("manylinux1_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "any")


def wheel(package: str, version: str) -> Path:
    folder = CACHE / f"{package}-{version}"
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "--python-version", "3.11", *platforms, "-q", "-d", str(folder), f"{package}=={version}"],
                       check=True, capture_output=True)
        found = sorted(folder.glob("*.whl"))
    return found[0]


def templates_in_wheel(package: str, version: str) -> list[dict[str, str]]:
    """The templates of one release, cached beside its wheel (reading a vllm wheel takes seconds)."""
    spec = PACKAGES[package]
    cached = CACHE / f"{package}-{version}" / "templates.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    with zipfile.ZipFile(wheel(package, version)) as zf:
        sources = {n: zf.read(n).decode("utf-8", "replace") for n in sorted(zf.namelist())
                   if n.endswith(".py") and spec["files"](n)}
    if spec.get("lora_files_only"):  # a file that never says "lora" holds no LoRA message: not parsed
        sources = {n: text for n, text in sources.items() if "lora" in text.lower()}
    out = extract(package, sources)
    cached.write_text(json.dumps(out))
    return out


# peft methods people call on a PeftModel whose absence an AttributeError reports: the first release
# that defines each (`def NAME` anywhere in its source) is recorded.
PEFT_API = ("merge_and_unload", "add_weighted_adapter", "unload", "set_adapter", "load_adapter", "delete_adapter",
            "get_nb_trainable_parameters", "print_trainable_parameters", "disable_adapter", "add_adapter",
            "merge_adapter", "unmerge_adapter")


def _peft_sources(version: str, cache_name: str, read: Callable[[dict[str, str]], set[str]]) -> list[str]:
    """read({path: source} of one peft release's modules), sorted, cached beside its wheel as `cache_name`."""
    cached = CACHE / f"peft-{version}" / cache_name
    if cached.is_file():
        return json.loads(cached.read_text())
    with zipfile.ZipFile(wheel("peft", version)) as zf:
        sources = {n: zf.read(n).decode("utf-8", "replace") for n in zf.namelist()
                   if n.startswith("peft/") and n.endswith(".py")}
    out = sorted(read(sources))
    cached.write_text(json.dumps(out))
    return out


def peft_api_in_wheel(version: str) -> list[str]:
    return _peft_sources(version, "api.json", lambda sources: {
        n for text in sources.values() for n in PEFT_API if f"def {n}(" in text})


def transformers_imports_in_wheel(version: str) -> list[str]:
    """The names peft's modules import from `transformers` itself at import time (module level, outside
    try/if): where the installed transformers lacks one, `import peft` fails with "cannot import name"."""
    def read(sources: dict[str, str]) -> set[str]:
        names: set[str] = set()
        for text in sources.values():
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError):
                continue
            names.update(alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                         and node.module == "transformers" and node.level == 0 for alias in node.names)
        return names
    return _peft_sources(version, "transformers_imports.json", read)


CONFIG_CLASSES = ("PretrainedConfig", "PreTrainedConfig", "GenerationConfig")
CONFIG_FILES = ("transformers/configuration_utils.py", "transformers/generation/configuration_utils.py")


def config_keys_in_wheel(version: str) -> list[str]:
    """The keys a transformers model or generation config.json holds: what PretrainedConfig and
    GenerationConfig set on themselves or pop from their kwargs (a config saved as adapter_config.json
    brings exactly these)."""
    keys: set[str] = set()
    with zipfile.ZipFile(wheel("transformers", version)) as zf:
        names = set(zf.namelist())
        for file in CONFIG_FILES:
            if file not in names:
                continue
            tree = ast.parse(zf.read(file).decode("utf-8"))
            for cls in tree.body:
                if not (isinstance(cls, ast.ClassDef) and cls.name in CONFIG_CLASSES):
                    continue
                for node in cls.body:  # class attributes: model_type, ...
                    target = node.target if isinstance(node, ast.AnnAssign) else None
                    if isinstance(target, ast.Name) and not target.id.startswith("__"):
                        keys.add(target.id)
                init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                for node in ast.walk(init) if init else ():
                    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                            and isinstance(node.value, ast.Name) and node.value.id == "self":
                        keys.add(node.attr)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                            and node.func.attr == "pop" and node.args and isinstance(node.args[0], ast.Constant) \
                            and isinstance(node.args[0].value, str):
                        keys.add(node.args[0].value)
    return sorted(keys)


def extract(package: str, sources: dict[str, str]) -> list[dict[str, str]]:
    """The templates of one release's selected files ({path in the wheel: source})."""
    constants: dict[str, str] = {}
    trees = {}
    for name in sorted(sources):
        try:
            trees[name] = ast.parse(sources[name])
        except (SyntaxError, ValueError):
            continue
        for key, value in module_constants(trees[name]).items():
            constants.setdefault(key, value)
    keep = PACKAGES[package]["keep"]
    return [{"kind": t.kind, "template": t.text, "file": t.file}
            for name in sorted(trees) for t in templates_of(sources[name], name, constants) if keep(t)]


def entry(package: str, kind: str, text: str, file: str, releases: list[str]) -> dict[str, Any] | None:
    """One catalogue entry, or None for a template too generic to recognise."""
    parts = parse(text)
    if len(longest_literal(parts).strip()) < MIN_LITERAL:
        return None  # "{x}" or "Invalid {y}": nothing to recognise it by
    digest = hashlib.sha1(f"{package}\0{kind}\0{text}".encode()).hexdigest()[:10]
    code, area = codes.verdict(package, render(parts), file, kind)
    return {"id": f"{package}-{digest}", "package": package, "kind": kind, "template": text, "file": file,
            "releases": releases, "code": code, "area": area}


def safetensors_probes(version: str) -> list[dict[str, str]]:
    with zipfile.ZipFile(wheel("safetensors", version)) as zf:
        binary = b"".join(zf.read(n) for n in zf.namelist() if n.endswith(".so"))
    found = []
    for probe in SAFETENSORS_PROBES:
        fragment = longest_literal(parse(probe)).encode()
        if fragment in binary:
            found.append({"kind": "rust error", "template": probe, "file": "safetensors (binary)"})
    return found


def collect(selected: Iterable[tuple[str, str]]) -> dict[str, Any]:
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    order: dict[str, list[str]] = {}
    for package, version in selected:
        log(f"{package} {version}")
        found = safetensors_probes(version) if package == "safetensors" else templates_in_wheel(package, version)
        order.setdefault(package, []).append(version)
        for t in found:
            key = (package, t["kind"], t["template"])
            found_in = entries.setdefault(key, {"file": t["file"], "releases": set()})
            found_in["file"] = t["file"]  # the newest release's file: where to read it today
            found_in["releases"].add(version)
    config_keys = sorted({k for v in order.get("transformers", []) for k in config_keys_in_wheel(v)})
    api_since: dict[str, str] = {}
    for version in order.get("peft", []):
        for name in peft_api_in_wheel(version):
            api_since.setdefault(name, version)
    imported: dict[str, set[str]] = {}
    for version in order.get("peft", []):
        for name in transformers_imports_in_wheel(version):
            imported.setdefault(name, set()).add(version)
    out = []
    for (package, kind, text), found_in in sorted(entries.items()):
        made = entry(package, kind, text, found_in["file"], _ranges(order[package], found_in["releases"]))
        if made is not None:
            out.append(made)
    out.sort(key=lambda e: e["id"])
    return {"note": "Generated by scripts/generate_messages.py from the released wheels; do not edit.",
            "releases": {p: v for p, v in sorted(order.items())}, "model_config_keys": config_keys,
            "peft_api_since": api_since,
            "peft_transformers_imports": {n: _ranges(order["peft"], v) for n, v in sorted(imported.items())},
            "entries": out}


def _ranges(order: list[str], present: set[str]) -> list[str]:
    """['0.3.0..0.6.2', '0.8.0']: runs of consecutive read releases that emit the message."""
    runs: list[list[str]] = []
    previous = False
    for version in order:
        if version in present:
            if previous:
                runs[-1][1] = version
            else:
                runs.append([version, version])
        previous = version in present
    return [a if a == b else f"{a}..{b}" for a, b in runs]


def render_catalogue(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=0, sort_keys=True, ensure_ascii=False) + "\n"


def everything() -> list[tuple[str, str]]:
    pairs = [(p, v) for p, spec in PACKAGES.items() for v in spec["versions"]()]
    return pairs + [("safetensors", v) for v in SAFETENSORS_VERSIONS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    parser.add_argument("--only", action="append", default=[], help="PACKAGE==VERSION (repeatable)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from packaging.version import Version
    only = sorted((tuple(o.split("==", 1)) for o in args.only), key=lambda pv: (pv[0], Version(pv[1])))
    selected = only or everything()
    text = render_catalogue(collect(selected))  # type: ignore[arg-type]
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        log("catalogue up to date" if same else f"{args.out} differs from a fresh run")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
