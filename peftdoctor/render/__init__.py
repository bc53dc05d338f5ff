"""One registry of renderers: (result type, format) -> function(result) -> text.

Adding an output format, or a result type, is one row here and one function in this package.
Types are named by their import path so that picking a renderer imports only what that result
needs (`check`, the pre-commit hook, must not pay for the merge and verify modules).
Machine formats are byte-stable: sorted keys, no timestamps.
"""
from __future__ import annotations

import importlib
from typing import Callable

from peftdoctor.errors import UsageError

CHECK, CHECKS = "peftdoctor.model.findings.Report", "peftdoctor.model.results.Checks"
PLAN, FIXES = "peftdoctor.ops.fix.Plan", "peftdoctor.model.results.Fixes"
SCAN, EXPLAINED = "peftdoctor.ops.scan.ScanReport", "peftdoctor.ops.explain.Explained"
FIXED_COPY = "peftdoctor.ops.fix_copy.FixedCopy"
MERGE, VERIFY = "peftdoctor.merge.result.MergeReport", "peftdoctor.verification.result.VerifyReport"

# (result type, format) -> "module:function"
RENDERERS: dict[tuple[str, str], str] = {
    (CHECK, "text"): "peftdoctor.render.report:render_text",
    (CHECK, "json"): "peftdoctor.render.report:render_json",
    (CHECK, "sarif"): "peftdoctor.render.report:render_sarif",
    (CHECKS, "text"): "peftdoctor.render.report:render_checks_text",
    (CHECKS, "json"): "peftdoctor.render.report:render_checks_json",
    (CHECKS, "sarif"): "peftdoctor.render.report:render_checks_sarif",
    (PLAN, "text"): "peftdoctor.render.fix:render_plan",
    (PLAN, "json"): "peftdoctor.render.fix:render_plan_json",
    (PLAN, "sarif"): "peftdoctor.render.fix:render_plan_sarif",
    (FIXES, "text"): "peftdoctor.render.fix:render_fixes_text",
    (FIXES, "json"): "peftdoctor.render.fix:render_fixes_json",
    (FIXES, "sarif"): "peftdoctor.render.fix:render_fixes_sarif",
    (FIXED_COPY, "text"): "peftdoctor.render.fix:render_copy",
    (FIXED_COPY, "json"): "peftdoctor.render.fix:render_copy_json",
    (FIXED_COPY, "sarif"): "peftdoctor.render.fix:render_copy_sarif",
    (SCAN, "text"): "peftdoctor.render.scan:render_text",
    (SCAN, "json"): "peftdoctor.render.scan:render_json",
    (SCAN, "sarif"): "peftdoctor.render.scan:render_sarif",
    (EXPLAINED, "text"): "peftdoctor.render.explain:render_text",
    (EXPLAINED, "json"): "peftdoctor.render.explain:render_json",
    (EXPLAINED, "sarif"): "peftdoctor.render.explain:render_sarif",
    (MERGE, "text"): "peftdoctor.render.merge:render_text",
    (MERGE, "json"): "peftdoctor.render.merge:render_json",
    (VERIFY, "text"): "peftdoctor.render.verify:render_text",
    (VERIFY, "json"): "peftdoctor.render.verify:render_json",
}


# Renderers that can write a large result piece by piece, for output that must not be built in memory.
WRITERS: dict[tuple[str, str], str] = {
    (SCAN, "json"): "peftdoctor.render.scan:write_json",
}


def type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def formats(result_type: str) -> tuple[str, ...]:
    """The formats a result type can be written in, in the order the registry lists them."""
    return tuple(fmt for kind, fmt in RENDERERS if kind == result_type)


def require_format(result_types: tuple[str, ...], fmt: str) -> None:
    """Refuse (a usage error) a format that one of the results a command may return cannot be written in."""
    for result_type in result_types:
        if (result_type, fmt) not in RENDERERS:
            raise UsageError(f"--format {fmt!r}: use {' or '.join(formats(result_type))}")


def renderer(result_type: str, fmt: str) -> Callable[[object], str]:
    require_format((result_type,), fmt)
    module, function = RENDERERS[(result_type, fmt)].split(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def render(result: object, fmt: str) -> str:
    """`result` as text in `fmt`; a pair the registry lacks is a usage error (exit 2), never plain text."""
    return renderer(type_name(type(result)), fmt)(result)


def render_to(result: object, fmt: str, write: Callable[[str], object]) -> None:
    """Like render(), but handing the text to `write` in pieces where the registry has a writer for it."""
    key = (type_name(type(result)), fmt)
    if key in WRITERS:
        module, function = WRITERS[key].split(":")
        getattr(importlib.import_module(module), function)(result, write)
    else:
        write(render(result, fmt))
