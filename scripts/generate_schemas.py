"""Generate schemas/peft-<version>.json from the real released peft wheels.

For each release: ensure its side-by-side env (``peft_envs.ensure_env``), run
``peft_introspect.py`` inside it, and turn the description into a draft
2020-12 JSON Schema. Output is byte-for-byte reproducible.

    python scripts/generate_schemas.py                 # every release >= 0.1.0
    python scripts/generate_schemas.py 0.13.2 0.21.2   # just these
    python scripts/generate_schemas.py --check         # exit 1 if files differ
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peft_envs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "schemas"
INTROSPECT = Path(__file__).resolve().with_name("peft_introspect.py")
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def log(message: str) -> None:
    """Progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def introspect(version: str) -> dict[str, Any]:
    """Run peft_introspect.py inside the env of ``version`` and parse its JSON."""
    argv, environ = peft_envs.env_python_cmd(version)
    proc = subprocess.run([*argv, str(INTROSPECT)], env=environ, cwd=INTROSPECT.parent,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peft {version}: introspection failed\n{proc.stderr[-4000:]}")
    doc = json.loads(proc.stdout)
    if doc["version"] != version:
        raise RuntimeError(f"env for {version} imported peft {doc['version']}")
    return doc


def build_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema for one release's description."""
    version = doc["version"]
    classes = doc["config_classes"]
    keys = sorted(classes)
    defs = {}
    for key in keys:
        definition = {"title": classes[key]["class"], "type": "object",
                      "properties": classes[key]["properties"]}
        if doc["unknown_keys"] == "raise":
            definition["additionalProperties"] = False
        defs[key] = definition
    return {
        "$schema": DRAFT,
        "$id": f"urn:peftdoctor:schema:peft-{version}",
        "title": f"adapter_config.json as loaded by peft {version}",
        "type": "object",
        "required": ["peft_type"],
        "properties": {"peft_type": {"enum": keys}},
        "allOf": [
            {"if": {"properties": {"peft_type": {"const": key}}, "required": ["peft_type"]},
             "then": {"$ref": f"#/$defs/{key}"}}
            for key in keys
        ],
        "$defs": defs,
        "x-peft": {
            "version": version,
            "config_classes": {key: classes[key]["class"] for key in keys},
            "task_types": doc["task_types"],
            "unknown_keys": doc["unknown_keys"],
            "unknown_key_message": doc["unknown_key_message"],
            "unknown_peft_type_error": doc["unknown_peft_type_error"],
            "unknown_task_type": doc["unknown_task_type"],
            "post_init_rules": doc["post_init_rules"],
        },
    }


def render(schema: dict[str, Any]) -> str:
    """Canonical serialisation used for the committed files."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def schema_text(version: str) -> str:
    """Generate the schema file content for ``version`` (installing its env if needed)."""
    start = time.monotonic()
    peft_envs.ensure_env(version)
    text = render(build_schema(introspect(version)))
    log(f"peft {version}: done in {time.monotonic() - start:.1f}s")
    return text


def schema_path(version: str, out_dir: Path = SCHEMA_DIR) -> Path:
    """Where the schema for ``version`` is committed."""
    return out_dir / f"peft-{version}.json"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="peft versions (default: all releases)")
    parser.add_argument("--check", action="store_true", help="compare with committed files, write nothing")
    parser.add_argument("--jobs", type=int, default=2, help="envs processed in parallel")
    parser.add_argument("--out-dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)

    versions = args.versions or peft_envs.available_versions()
    log(f"{len(versions)} release(s): {' '.join(versions)}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        texts = dict(zip(versions, pool.map(schema_text, versions)))

    if args.check:
        stale = [v for v, text in texts.items()
                 if not schema_path(v, args.out_dir).is_file()
                 or schema_path(v, args.out_dir).read_text() != text]
        for version in stale:
            print(schema_path(version, args.out_dir))
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for version, text in texts.items():
        schema_path(version, args.out_dir).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
