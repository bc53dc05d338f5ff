"""The command line: parse options, call the core, print, exit. Nothing else lives here."""
from __future__ import annotations

import enum
import json
import sys
from typing import List, Optional

import typer

from . import __version__
from .adapter import UnusableInput
from .check import check as run_check
from .report import Report, Severity
from .reporters import REPORTER_BY_NAME, to_dict
from .rules import RULES, markdown_table

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Diagnose and fix PEFT adapters before they fail to load or silently change meaning.")


class Format(str, enum.Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


class FailOn(str, enum.Enum):
    error = "error"
    warning = "warning"
    info = "info"


def _fail(message: str) -> None:
    typer.echo(f"peftdoctor: {message}", err=True)


@app.command()
def check(
    paths: List[str] = typer.Argument(..., help="Adapter directories, adapter_config.json files, or cached hub repo ids."),
    peft: Optional[str] = typer.Option(None, "--peft", help="Judge for this peft release instead of the installed one."),
    fmt: Format = typer.Option(Format.text, "--format", help="Output format."),
    fail_on: FailOn = typer.Option(FailOn.error, "--fail-on", help="Lowest severity that makes the exit code 1."),
) -> None:
    """Check adapters against the schemas of every peft release."""
    reports: list[Report] = []
    unusable = False
    for path in paths:
        try:
            reports.append(run_check(path, peft=peft))
        except UnusableInput as exc:
            _fail(str(exc))
            unusable = True
    if reports:
        typer.echo(_render(reports, fmt), nl=False)
    threshold = Severity(fail_on.value)
    if unusable or any(r.kind != "peft-adapter" for r in reports):
        raise typer.Exit(EXIT_UNUSABLE)
    raise typer.Exit(EXIT_FINDINGS if any(r.fails_at(threshold) for r in reports) else EXIT_CLEAN)


def _render(reports: list[Report], fmt: Format) -> str:
    if len(reports) == 1 or fmt is Format.text:
        return "".join(REPORTER_BY_NAME[fmt.value](r) for r in reports)
    if fmt is Format.json:
        return json.dumps({"format_version": 1, "reports": [to_dict(r) for r in reports]},
                          indent=2, sort_keys=True) + "\n"
    runs = [json.loads(REPORTER_BY_NAME["sarif"](r)) for r in reports]
    merged = runs[0]
    merged["runs"] = [run for sarif in runs for run in sarif["runs"]]
    return json.dumps(merged, indent=2, sort_keys=True) + "\n"


@app.command()
def rules(fmt: str = typer.Option("text", "--format", help="text, json or markdown.")) -> None:
    """List every finding code with its default severity and meaning."""
    if fmt == "markdown":
        typer.echo(markdown_table(), nl=False)
        return
    if fmt not in ("text", "json"):
        _fail(f"--format {fmt!r}: use text, json or markdown")
        raise typer.Exit(EXIT_UNUSABLE)
    if fmt == "text":
        for r in RULES.values():
            typer.echo(f"{r.code}  {r.severity.value:<7}  {r.name:<26}  {r.summary}")
        return
    typer.echo(json.dumps([{"code": r.code, "name": r.name, "severity": r.severity.value, "summary": r.summary}
                           for r in RULES.values()], indent=2))


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(f"peftdoctor {__version__}")
        raise typer.Exit(EXIT_CLEAN)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _fail("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug of ours must still end in one line and exit 2, not a traceback
        _fail(f"internal error: {type(exc).__name__}: {exc} (please report this)")
        sys.exit(EXIT_UNUSABLE)
