"""SARIF 2.1.0 for every command that has findings: one log, one run, one result per finding.

One run per log because GitHub code scanning refuses several runs of one tool and category in
an upload; the rules listed are exactly those the results use (tests/test_cli.py validates the
output against the official schema).
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Iterable, Optional

from peftdoctor import __version__
from peftdoctor.model.findings import Finding
from peftdoctor.rules.registry import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def artifact(path: str, file: Optional[str]) -> str:
    """The file a finding about adapter `path` concerns: the adapter's config unless it names another."""
    if path.endswith(".json"):  # the config file itself was given
        return path if not file else posixpath.join(posixpath.dirname(path), file)
    return f"{path.rstrip('/')}/{file or 'adapter_config.json'}"


def sarif_log(located: Iterable[tuple[Optional[str], Finding]]) -> str:
    """A SARIF log of (artifact uri or None for no location, finding) pairs, byte-stable."""
    pairs = list(located)
    used = sorted({f.code for _, f in pairs})
    rules = [{"id": c, "name": RULES[c].name, "shortDescription": {"text": RULES[c].summary},
              "defaultConfiguration": {"level": SARIF_LEVEL[RULES[c].severity.value]}} for c in used]
    results = []
    for uri, f in pairs:
        result: dict[str, Any] = {
            "ruleId": f.code, "ruleIndex": used.index(f.code), "level": SARIF_LEVEL[f.severity.value],
            "message": {"text": f"{f.message}. Fix: {f.fix}"},
        }
        if uri is not None:
            result["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": uri}}}]
        if f.key:
            result["properties"] = {"key": f.key}
        results.append(result)
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "peftdoctor", "version": __version__, "rules": rules}},
        "results": results}]}
    return json.dumps(log, indent=2, sort_keys=True) + "\n"
