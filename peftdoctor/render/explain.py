"""Render what `explain` returns: each recognised failure as its finding, for people and machines."""
from __future__ import annotations

import json

from peftdoctor.model.findings import FORMAT_VERSION
from peftdoctor.ops.explain import Explained
from peftdoctor.render.sarif import sarif_log
from peftdoctor.render.terminal import lines


def render_text(explained: Explained) -> str:
    # Nothing recognised prints nothing on stdout: the CLI says so on stderr and exits 1.
    out = []
    for e in explained.explanations:
        out += [f"{e.finding.code} {e.finding.severity.value}: {e.finding.message}", f"      fix: {e.finding.fix}"]
        for a in e.alternatives:
            out += [f"   or {a.code}: {a.message}", f"      fix: {a.fix}"]
        if e.source:
            out.append(f"      message: {e.source}")  # the log's own line, quoted: escaped like any value
    return lines(out)


def render_json(explained: Explained) -> str:
    body = {"format_version": FORMAT_VERSION,
            "explanations": [{**e.finding.to_dict(), "matched": e.matched, "source": e.source or None,
                              "alternatives": [a.to_dict() for a in e.alternatives]}
                             for e in explained.explanations]}
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def render_sarif(explained: Explained) -> str:
    # The finding is located in the log it was read from; standard input has no uri to give.
    uri = None if explained.source == "-" else explained.source
    return sarif_log((uri, e.finding) for e in explained.explanations)
