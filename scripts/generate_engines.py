"""Generate peftdoctor/engines/<engine>.json from each engine release's source, byte for byte reproducibly.

Two steps, each reproducible on its own:
  1. facts: for every checked release, the few source files (scripts/engines/sources.py: downloaded once
     from the released wheel, cached under ~/.cache/peftdoctor/engine-sources/) go through the engine's
     extractors (scripts/engines/<engine>.py FACTS) into scripts/engines/facts/<engine>.json.
  2. tables: the facts, collapsed into release ranges, become rows (scripts/engines/<engine>.py SLOTS).

    python scripts/generate_engines.py                 # both steps, every engine
    python scripts/generate_engines.py vllm            # one engine
    python scripts/generate_engines.py --tables-only   # step 2 from the committed facts
    python scripts/generate_engines.py --check         # exit 1 if step 2 would change a committed table
    python scripts/generate_engines.py --ci-sources    # cache the few releases the tests extract again
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent / "engines"))
import extractors  # noqa: E402
import sources  # noqa: E402
from spec import EngineSpec, Row, Rows, Static  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TABLE_DIR = ROOT / "peftdoctor" / "engines"
FACTS_DIR = Path(__file__).resolve().parent / "engines" / "facts"
GENERATED = ("vllm", "sglang", "tgi")
# The releases whose real source tests/test_engine_tables.py extracts again (scripts/test.sh caches them first):
# SGLang before and after it refused DoRA and gained embedding LoRA, and the newest vLLM.
CI_RELEASES = (("sglang", "0.5.6"), ("sglang", "0.5.11"), ("vllm", "0.34.0"))

Facts = dict[str, dict[str, dict[str, Any]]]  # release -> fact -> {"value", "where"?, "text"?}


def engine_module(engine: str) -> Any:
    return importlib.import_module(engine)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def extract_release(engine: str, version: str) -> dict[str, dict[str, Any]]:
    """The facts of one release, read from its cached source (downloaded when missing)."""
    return extractors.extract(engine_module(engine).FACTS, sources.ensure_sources(engine, version))


def extract_all(engine: str) -> Facts:
    module = engine_module(engine)
    return {version: extract_release(engine, version) for version in module.SPEC.releases}


def _key(values: tuple[Any, ...]) -> str:
    return "|".join(str(v) for v in values)


def _rows(spec: EngineSpec, slot: Rows, release: dict[str, dict[str, Any]]) -> tuple[tuple[Row, str, dict], ...]:
    """The rows one release's facts select, each with its message and params."""
    key = _key(tuple(release[f]["value"] for f in slot.facts))
    matched = [rows for pattern, rows in slot.by if fnmatchcase(key, pattern)]
    if not matched:
        raise ValueError(f"{spec.engine} {slot.feature}: no row for facts {key!r}")
    fields = {f: release[f].get("text", release[f]["value"]) for f in slot.facts}
    chosen = () if matched[0] is None else matched[0] if isinstance(matched[0], tuple) else (matched[0],)
    return tuple((row, row.message.format_map(fields),
                  {**{name: release[fact]["value"] for name, fact in row.params_from.items()}, **row.params})
                 for row in chosen)


def _runs(spec: EngineSpec, slot: Rows, facts: Facts) -> list[tuple[list[str], tuple[Any, ...]]]:
    """Consecutive (gated) releases whose facts select the same row with the same message and params."""
    runs: list[tuple[list[str], tuple[Any, ...]]] = []
    for version in spec.releases:
        if slot.gate is not None and facts[version][slot.gate]["value"] is not True:
            continue
        state = _rows(spec, slot, facts[version])
        if runs and runs[-1][1] == state:
            runs[-1][0].append(version)
        else:
            runs.append(([version], state))
    return runs


def _range(spec: EngineSpec, versions: list[str]) -> str:
    following = spec.releases.index(versions[-1]) + 1
    upper = f",<{spec.releases[following]}" if following < len(spec.releases) else ""
    return f">={versions[0]}{upper}"


def rows_for(spec: EngineSpec, slot: Rows, facts: Facts) -> list[dict[str, Any]]:
    """The table entries of one slot: one per run and row, in release order."""
    entries: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for versions, chosen in _runs(spec, slot, facts):
        for row, message, params in chosen:
            entries.append(_entry(spec, slot, facts, versions, row, message, params, seen))
    return entries


def _entry(spec: EngineSpec, slot: Rows, facts: Facts, versions: list[str], row: Row, message: str,
           params: dict[str, Any], seen: dict[int, int]) -> dict[str, Any]:
    """One table entry: a row over a run of releases, cited at the run's first release."""
    run = seen[id(row)] = seen.get(id(row), -1) + 1
    first = facts[versions[0]]
    fields = {f: first[f].get("text", first[f]["value"]) for f in slot.facts}
    decisive = {slot.facts[0], *row.params_from.values(), *row.cite_facts}
    wheres = sorted({first[f]["where"] for f in decisive if "where" in first[f]})
    if "{where}" in row.cite and not wheres:
        raise ValueError(f"{spec.engine} {slot.feature}: row {row.id} cites a hit but {versions[0]} has none")
    entry_id = row.id.format(run="abcdefghij"[run])
    if run and "{run}" not in row.id:
        raise ValueError(f"{spec.engine}: {entry_id} would stand for two separate runs; give it {{run}}")
    later = f" (same to {versions[-1]})" if len(versions) > 1 else ""
    entry = {"id": entry_id, "feature": row.feature or slot.feature, "releases": _range(spec, versions),
             "behaviour": row.behaviour, "message": message, "fix": row.fix,
             "source": f"{spec.repo}@{spec.tag.format(version=versions[0])}: "
                       f"{row.cite.format(where='; '.join(wheres), **fields)}{later}; read from the released "
                       f"{spec.source_kind}"}
    if row.rewrite:
        entry["rewrite"] = row.rewrite
    if params:
        entry["params"] = params
    return entry


def build_table(engine: str, facts: Facts) -> dict[str, Any]:
    spec: EngineSpec = engine_module(engine).SPEC
    missing = [v for v in spec.releases if v not in facts]
    if missing:
        raise ValueError(f"{engine}: no facts for {', '.join(missing)} (run without --tables-only)")
    entries = []
    for slot in spec.slots:
        entries += [slot.entry] if isinstance(slot, Static) else rows_for(spec, slot, facts)
    table = {"engine": engine, "name": spec.name, "note": spec.note, "checked_releases": list(spec.releases)}
    for key, fact in spec.extra.items():
        table[key] = {version: facts[version][fact]["value"] for version in spec.releases}
    return {**table, "entries": entries}


def facts_path(engine: str) -> Path:
    return FACTS_DIR / f"{engine}.json"


def read_facts(engine: str) -> Facts:
    return json.loads(facts_path(engine).read_text("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", nargs="*", default=list(GENERATED))
    parser.add_argument("--tables-only", action="store_true", help="build the tables from the committed facts")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed table differs")
    parser.add_argument("--ci-sources", action="store_true", help="only cache the sources the tests read")
    args = parser.parse_args(argv)
    if args.ci_sources:
        for engine, version in CI_RELEASES:
            print(sources.ensure_sources(engine, version))
        return 0
    stale = []
    for engine in args.engines:
        started = time.monotonic()
        if not (args.tables_only or args.check):
            facts_path(engine).write_text(dumps(extract_all(engine)), "utf-8")
        text = dumps(build_table(engine, read_facts(engine)))
        table = TABLE_DIR / f"{engine}.json"
        if args.check:
            if table.read_text("utf-8") != text:
                stale.append(engine)
        else:
            table.write_text(text, "utf-8")
        print(f"{engine}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    if stale:
        print(f"stale: {', '.join(stale)} (run scripts/generate_engines.py --tables-only)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
