"""Render what `merge` returns: a few lines for people, every field for machines."""
from __future__ import annotations

import json
from dataclasses import asdict

from peftdoctor.merge.result import MergeReport
from peftdoctor.model.findings import FORMAT_VERSION
from peftdoctor.render.terminal import lines as text_lines


def render_text(report: MergeReport) -> str:
    lines = [
        f"merged {report.adapter} into {report.base} -> {report.out}",
        f"  {report.tensors_merged} tensors merged, {report.tensors_replaced} replaced (modules_to_save), "
        f"{report.tensors_passed} passed through; {report.shards} shard(s), {report.bytes_written / 1e9:.2f} GB",
        f"  {report.seconds:.1f} s, peak RSS {report.peak_rss_bytes / 2**30:.2f} GiB, dtype {report.dtype}, "
        f"device {report.device}",
        f"  equality: {report.equality}",
    ]
    if report.untied:
        lines.append(f"  untied: {', '.join(report.untied)} written separately; tie_word_embeddings set false "
                     "in config.json (a re-tied model would lose one trained matrix)")
    lines += [f"  note: {n}" for n in report.notes]
    return text_lines(lines)


def render_json(report: MergeReport) -> str:
    data = {"format_version": FORMAT_VERSION, "kind": "merge", **asdict(report)}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
