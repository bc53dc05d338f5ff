"""Generate peftdoctor/peft/transformers_axis.json, the transformers axis, by running the real releases.

Sections (each regenerated alone with --only NAME; the others are kept as committed):

- imports: for the newest patch release of each peft minor of peft-era-pins.tsv and each transformers release of
  the axis
  (scripts/transformers_envs.py), whether `import peft; from peft import PeftModel` succeeds with that
  pair installed side by side, and the exact error text where it fails (paths of this machine removed).
  Only failures are stored; a pair absent from the table imports.
- applications: tiny real adapters (scripts/axis/application_probe.py) written under transformers 4.x and 5.x,
  loaded under each pair of LOADERS: which saved modules got weights, and whether the logits are the writer's
  base + adapter ("adapter"), the base, neither ("partial"), or the error.
- renames: transformers' load-time renames of checkpoint keys per release and model type (4.x
  `_checkpoint_conversion_mapping`, 5.x conversion_mapping's WeightRenaming/WeightConverter) by
  scripts/axis/renames_probe.py, and the first peft release that applies each kind to adapter keys (its source).
- architectures (its own file, architectures_axis.json): the module tables of AXIS_MODEL_TYPES under every
  older release of the axis, by scripts/generate_architectures.py run there, stored where they differ.

    python scripts/generate_transformers_axis.py               # every section
    python scripts/generate_transformers_axis.py --only imports
    python scripts/generate_transformers_axis.py --check       # exit 1 if a committed file differs

Measured data: the output is byte-for-byte reproducible on the same releases (sorted keys, one entry a line).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import peft_envs  # noqa: E402
import transformers_envs  # noqa: E402
from generate_architectures import dumps  # noqa: E402 - one layout for the generated tables

OUT = ROOT / "peftdoctor" / "peft" / "transformers_axis.json"
PROBES = ROOT / "scripts" / "axis"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_under(transformers: str, script: str, *args: str, extra: Optional[list[Path]] = None,
              timeout: float = 3600) -> Any:
    """The JSON printed by `script` (under scripts/axis/ unless a path) run under transformers `transformers`
    (and `extra` first on the path)."""
    paths = [*(extra or []), *transformers_envs.ensure_transformers(transformers)]
    environ = peft_envs.environ_for(paths)
    environ.pop("PYTHONDONTWRITEBYTECODE")  # the envs are installed --no-compile: compile what is imported once
    path = str(PROBES / script) if "/" not in script else script
    done = subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                          env=environ, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{script} under transformers {transformers}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_releases() -> list[str]:
    """The newest patch release of each peft minor version, and the first of the minors whose imports the issue
    measured (0.15.0, 0.17.0): a patch release changes no imports, and every pair costs seconds."""
    from packaging.version import Version

    newest: dict[tuple[int, ...], str] = {}
    for version in sorted(peft_envs.read_pins(), key=Version):
        newest[Version(version).release[:2]] = version
    return sorted({*newest.values(), "0.15.0", "0.17.0"}, key=Version)


def cached(name: str, key: Any, measure: Callable[[], Any]) -> Any:
    """measure(), kept under ~/.cache/peftdoctor/axis-probes/ for the same key: one release's probes can run
    in another process (--only imports --transformers ...) and a later run assembles them."""
    path = transformers_envs.root() / "axis-probes" / f"{name}.json"
    if path.exists():
        saved = json.loads(path.read_text("utf-8"))
        if saved["key"] == key:
            return saved["value"]
    value = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}), "utf-8")
    return value


def imports(peft: Optional[list[str]] = None) -> dict[str, Any]:
    releases = peft or import_releases()
    dirs = {str(transformers_envs.ensure_peft(v)): v for v in releases}
    failures: dict[str, dict[str, str]] = {}
    for transformers in transformers_envs.TRANSFORMERS:
        answers = cached(f"imports-{transformers}", list(dirs),
                         lambda: run_under(transformers, "import_probe.py", *dirs))
        for directory, error in answers.items():
            if error is not None:
                failures.setdefault(dirs[directory], {})[transformers] = error
        log(f"transformers {transformers}: {sum(e is not None for e in answers.values())} of {len(answers)} fail")
    return {"peft": releases, "import_failures": failures}


# Who writes the adapters of scripts/axis/application_probe.py, and the pairs that load them.
WRITERS = {"4x": ("0.18.1", "4.57.6"), "5x": ("0.21.2", "5.25.0")}
LOADERS = (*((p, "4.57.6") for p in ("0.17.1", "0.18.1", "0.19.1", "0.21.2")),
           *((p, t) for p in ("0.17.1", "0.18.1", "0.19.1", "0.21.2") for t in ("5.5.4", "5.12.1", "5.23.0")),
           ("0.21.2", "5.25.0"))


def applications(work: Optional[Path] = None) -> dict[str, Any]:
    """What each adapter of application_probe.py computes under each pair of LOADERS: the writers save them
    (tiny bases, random lora_B), each pair loads them and compares the logits with the writer's."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        root = str(work or scratch)
        for side, (peft, transformers) in WRITERS.items():
            run_under(transformers, "application_probe.py", "save", root, side,
                      extra=[transformers_envs.ensure_peft(peft)])
        adapters: dict[str, Any] = {}
        for peft, transformers in LOADERS:
            try:
                answers = run_under(transformers, "application_probe.py", "load", root,
                                    extra=[transformers_envs.ensure_peft(peft)])
            except RuntimeError as exc:  # the pair does not import: the imports section says why
                log(f"peft {peft} + transformers {transformers}: {str(exc)[-200:]}")
                continue
            for name, answer in answers.items():
                entry = adapters.setdefault(name, {"saved": answer.pop("saved"), "pairs": {}})
                answer.pop("saved", None)
                entry["pairs"][f"{peft}+{transformers}"] = answer
            log(f"peft {peft} + transformers {transformers}: {sorted({a['outcome'] for a in answers.values()})}")
    return {"applications": {"writers": {s: f"peft {p} + transformers {t}" for s, (p, t) in WRITERS.items()},
                             "adapters": adapters}}


# What a peft release applies of transformers' renames to an adapter's keys, found in its source: the first
# release whose file holds the marker.
PEFT_APPLIES = {
    "checkpoint_conversion_mapping": ("peft/peft_model.py", "_checkpoint_conversion_mapping"),
    "weight_conversion": ("peft/utils/save_and_load.py", "convert_peft_adapter_state_dict_for_transformers"),
}


def renames() -> dict[str, Any]:
    """transformers' load-time renames per release and model type (scripts/axis/renames_probe.py), and from which
    peft release on each kind is applied to adapter keys (read from each release's source)."""
    per_release = {t: run_under(t, "renames_probe.py", *AXIS_MODEL_TYPES) for t in transformers_envs.TRANSFORMERS}
    applies = {}
    for kind, (path, marker) in PEFT_APPLIES.items():
        applies[kind] = next((v for v in peft_envs.read_pins()
                              if marker in (transformers_envs.ensure_peft(v) / path).read_text("utf-8")), None)
    return {"renames": per_release, "peft_applies": applies}


# The model types whose module tables are generated under every release of the axis: the dense families the
# tests build, the MoE families whose experts transformers 5 fused, and a VLM whose towers were renamed.
AXIS_MODEL_TYPES = ("gpt2", "llama", "llava", "mistral", "mixtral", "opt", "qwen2", "qwen2_moe")
ARCH_OUT = ROOT / "peftdoctor" / "peft" / "architectures_axis.json"


def architectures() -> dict[str, Any]:
    """Module tables of AXIS_MODEL_TYPES under each release older than architectures.json's, by
    scripts/generate_architectures.py run there; written to ARCH_OUT (its own file: check reads it only for
    another release), each entry stored only where it differs from the next newer release's."""
    newest = json.loads((ROOT / "peftdoctor" / "peft" / "architectures.json").read_text("utf-8"))
    later = {m: newest["model_types"].get(m, newest["skipped"].get(m)) for m in AXIS_MODEL_TYPES}
    releases: dict[str, Any] = {}
    for transformers in reversed(transformers_envs.TRANSFORMERS):
        if transformers == newest["transformers"]:
            continue
        made = run_under(transformers, str(ROOT / "scripts" / "generate_architectures.py"), "--stdout",
                         *AXIS_MODEL_TYPES)
        entries = {m: made["model_types"].get(m, made["skipped"].get(m)) for m in AXIS_MODEL_TYPES}
        releases[transformers] = {m: e for m, e in entries.items() if e != later[m]}
        later = entries
        log(f"transformers {transformers}: {sorted(releases[transformers])} differ from the next release")
    return {"architectures": {"generator": "scripts/generate_transformers_axis.py", "newest": newest["transformers"],
                              "model_types": list(AXIS_MODEL_TYPES), "releases": releases}}


SECTIONS: dict[str, Callable[[], dict[str, Any]]] = {"imports": imports, "applications": applications,
                                                      "renames": renames, "architectures": architectures}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--check", action="store_true", help="compare with the committed file; write nothing")
    parser.add_argument("--transformers", nargs="*", help="measure only these releases (into the probe cache)")
    args = parser.parse_args(argv)
    if args.transformers:
        transformers_envs.TRANSFORMERS = tuple(args.transformers)  # type: ignore[misc]
        for name in args.only or SECTIONS:
            SECTIONS[name]()
        return 0
    fresh: dict[str, Any] = {}
    for name in args.only or SECTIONS:
        fresh.update(SECTIONS[name]())
    outputs: dict[Path, str] = {}
    if "architectures" in fresh:  # a file of its own
        outputs[ARCH_OUT] = dumps(fresh.pop("architectures"))
    if fresh:
        # read only now: sections generated by concurrent runs are kept
        data = json.loads(OUT.read_text("utf-8")) if OUT.exists() and args.only else {}
        data.update(fresh, generator="scripts/generate_transformers_axis.py",
                    transformers=list(transformers_envs.TRANSFORMERS))
        outputs[OUT] = dumps(data)
    if args.check:
        stale = [path.name for path, text in outputs.items() if not path.exists() or path.read_text("utf-8") != text]
        log(f"{', '.join(stale)} differ: regenerate" if stale else "up to date")
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text, "utf-8")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
