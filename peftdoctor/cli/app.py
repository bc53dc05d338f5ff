"""The command line: parse options, call the core, print, exit. Nothing else lives here."""
from __future__ import annotations

import enum
import json
import sys
from typing import List, Optional

import typer

from peftdoctor import __version__
from peftdoctor.io.adapter import UnusableInput, open_adapter
from peftdoctor.model.findings import Report, Severity
from peftdoctor.ops.check import check as run_check
from peftdoctor.ops.combine import COMBINATIONS, Combination, combine
from peftdoctor.render.report import REPORTER_BY_NAME, combination_to_dict, render_combination, to_dict
from peftdoctor.rules.registry import RULES, markdown_table

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2
# explain keeps the end of a longer log: the traceback that matters is printed last.
EXPLAIN_MAX_BYTES = 32 * 1024 * 1024

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
    combine_as: Optional[str] = typer.Option(None, "--combine", help="Also say whether these adapters can be "
                                             "combined by add_weighted_adapter: linear, ties, svd, cat, ..."),
    serve: Optional[str] = typer.Option(None, "--target", help="Also judge for a serving engine: vllm, sglang or "
                                        "tgi, optionally ==VERSION."),
) -> None:
    """Check adapters against the schemas of every peft release."""
    if combine_as is not None and combine_as not in COMBINATIONS:
        _fail(f"--combine {combine_as!r}: use one of {', '.join(COMBINATIONS)}")
        raise typer.Exit(EXIT_UNUSABLE)
    reports: list[Report] = []
    unusable = False
    for path in paths:
        try:
            reports.append(run_check(path, peft=peft, serve=serve))
        except UnusableInput as exc:
            _fail(str(exc))
            unusable = True
        except Exception as exc:  # noqa: BLE001 - a bug of ours on one adapter must not lose the others' reports
            _fail(f"{path}: internal error: {type(exc).__name__}: {exc} (please report this)")
            unusable = True
    combination = _combination(paths, reports, combine_as) if combine_as and not unusable else None
    if reports:
        typer.echo(_render(reports, fmt, combination), nl=False)
    threshold = Severity(fail_on.value)
    if unusable or any(r.kind != "peft-adapter" for r in reports):
        raise typer.Exit(EXIT_UNUSABLE)
    failed = any(r.fails_at(threshold) for r in reports) or (combination is not None and not combination.possible)
    raise typer.Exit(EXIT_FINDINGS if failed else EXIT_CLEAN)


def _combination(paths: list[str], reports: list[Report], combine_as: str) -> Optional[Combination]:
    configs = [open_adapter(p).config for p in paths]
    if any(c is None for c in configs):
        return None  # an unreadable config is already a finding of its own report
    return combine(reports, [c for c in configs if c is not None], combine_as)


def _render(reports: list[Report], fmt: Format, combination: Optional[Combination] = None) -> str:
    if fmt is Format.text:
        text = "".join(REPORTER_BY_NAME[fmt.value](r) for r in reports)
        return text + (render_combination(combination) if combination else "")
    if fmt is Format.json and (len(reports) > 1 or combination):
        body: dict = {"format_version": 1, "reports": [to_dict(r) for r in reports]}
        if combination:
            body["combination"] = combination_to_dict(combination)
        return json.dumps(body, indent=2, sort_keys=True) + "\n"
    if len(reports) == 1:
        return REPORTER_BY_NAME[fmt.value](reports[0])
    runs = [json.loads(REPORTER_BY_NAME["sarif"](r)) for r in reports]
    merged = runs[0]
    merged["runs"] = [run for sarif in runs for run in sarif["runs"]]
    return json.dumps(merged, indent=2, sort_keys=True) + "\n"


@app.command()
def fix(
    paths: List[str] = typer.Argument(..., help="Adapter directories or their adapter_config.json files."),
    peft: Optional[str] = typer.Option(None, "--peft", help="Rewrite for this peft release instead of the installed one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; write nothing."),
    show_diff: bool = typer.Option(False, "--diff", help="Print a unified diff of the rewrite."),
    check_only: bool = typer.Option(False, "--check", help="Exit 1 if a fix would change a file; write nothing."),
    backup_suffix: str = typer.Option(".orig", "--backup-suffix", help="Keep the original as FILE+SUFFIX ('' for none)."),
    force: bool = typer.Option(False, "--force", help="Also drop meaning-bearing keys the target cannot express."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json."),
    serve: Optional[str] = typer.Option(None, "--target", help="Also rewrite for a serving engine (vllm, sglang, "
                                        "tgi[==VERSION]) so that it computes what peft computes."),
) -> None:
    """Rewrite adapter_config.json so it loads under a peft release and computes the same thing."""
    codes = [_fix_one(p, peft, dry_run, show_diff, check_only, backup_suffix, force, fmt, serve) for p in paths]
    raise typer.Exit(max(codes))


def _fix_one(path: str, peft: Optional[str], dry_run: bool, show_diff: bool, check_only: bool,
             backup_suffix: str, force: bool, fmt: Format, serve: Optional[str]) -> int:
    # Imported here so that `check`, the hook that runs on every commit, does not pay for them.
    from peftdoctor.io.atomic import WriteRefused
    from peftdoctor.ops.fix import apply, diff
    from peftdoctor.ops.fix import plan as make_plan
    from peftdoctor.render.fix import plan_to_dict, render_plan

    try:
        the_plan = make_plan(path, peft=peft, force=force, serve=serve)
    except UnusableInput as exc:
        _fail(str(exc))
        return EXIT_UNUSABLE
    if fmt is Format.json:
        typer.echo(json.dumps(plan_to_dict(the_plan), indent=2, sort_keys=True))
    else:
        typer.echo(render_plan(the_plan), nl=False, err=check_only)
    if show_diff:
        typer.echo(diff(the_plan), nl=False)
    if the_plan.refused:
        return EXIT_FINDINGS
    if check_only or dry_run:
        return EXIT_FINDINGS if check_only and the_plan.changed else EXIT_CLEAN
    try:
        backup = apply(the_plan, backup_suffix or None)
    except WriteRefused as exc:
        _fail(str(exc))
        return EXIT_UNUSABLE
    if the_plan.changed and fmt is Format.text:
        typer.echo(f"wrote {the_plan.config_path}" + (f" (original kept as {backup})" if backup else ""), err=True)
    return EXIT_CLEAN


@app.command()
def verify(
    adapter: str = typer.Argument(..., help="Adapter directory (or cached hub repo id)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model path or cached repo id (default: "
                                       "base_model_name_or_path)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    out: Optional[str] = typer.Option(None, "--out", help="Save the merged model here (must not exist or be empty)."),
    fmt: str = typer.Option("text", "--format", help="text or json."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Largest relative logit difference allowed."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the base."),
) -> None:
    """Load base + adapter on the target device, merge, compare, and save a deployable merged model."""
    from peftdoctor.verification.command import verify_command  # the heavy stack loads only here

    raise typer.Exit(verify_command(adapter, base, device, dtype, out, fmt, tolerance, trust_remote_code))


@app.command()
def merge(
    adapter: str = typer.Argument(..., help="LoRA adapter directory (or cached hub repo id)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model directory or cached repo id with "
                                       "safetensors shards (default: base_model_name_or_path)."),
    out: str = typer.Option(..., "--out", help="Directory to write the merged model to (must not exist)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]: where each layer's delta is computed."),
    fmt: str = typer.Option("text", "--format", help="text or json."),
) -> None:
    """Merge a LoRA adapter into a base shard by shard, tensor by tensor: peak memory about one shard."""
    from peftdoctor.merge.command import merge_command  # the heavy stack loads only here

    raise typer.Exit(merge_command(adapter, base, out, dtype, device, fmt))


@app.command()
def scan(
    root: str = typer.Argument(..., help="A tree to search for adapters (training output, a monorepo)."),
    peft: Optional[str] = typer.Option(None, "--peft", help="Judge for this peft release instead of the installed one."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json."),
    fail_on: FailOn = typer.Option(FailOn.error, "--fail-on", help="Lowest severity that makes the exit code 1."),
) -> None:
    """Check every adapter under a directory tree and summarise the findings, worst first."""
    import tempfile

    from peftdoctor.ops import scan as scanning

    # Each full report is spooled to disk as it is made (json) or dropped once summarised (text):
    # memory stays bounded for 10,000 adapters.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        def each(report: Report) -> None:
            if fmt is Format.json:
                spool.write(scanning.spool_line(report))

        try:
            result = scanning.scan(root, peft=peft, each=each)
        except UnusableInput as exc:
            _fail(str(exc))
            raise typer.Exit(EXIT_UNUSABLE)
        if fmt is Format.json:
            spool.seek(0)
            scanning.write_json(result, spool, lambda text: typer.echo(text, nl=False))
        else:
            typer.echo(scanning.render_text(result), nl=False)
    raise typer.Exit(EXIT_FINDINGS if result.fails_at(Severity(fail_on.value)) else EXIT_CLEAN)


@app.command()
def explain(
    source: str = typer.Argument("-", help="A file holding the error text or traceback, or - for standard input."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json."),
) -> None:
    """Map an error text from loading or merging an adapter to its finding code and fix."""
    from peftdoctor.io.files import FileRefused, read_stream_tail
    from peftdoctor.ops.explain import explain as run_explain

    try:
        raw, _cut = read_stream_tail(source, EXPLAIN_MAX_BYTES, stdin=sys.stdin.buffer)
    except FileRefused as exc:
        _fail(str(exc))
        raise typer.Exit(EXIT_UNUSABLE)
    except OSError as exc:
        _fail(f"{source}: cannot read: {exc.strerror}")
        raise typer.Exit(EXIT_UNUSABLE)
    text = raw.decode("utf-8", errors="replace")
    found = run_explain(text)
    if fmt is Format.json:
        typer.echo(json.dumps({"format_version": 1, "explanations": [
            {**e.finding.to_dict(), "matched": e.matched} for e in found]}, indent=2, sort_keys=True))
    else:
        for e in found:
            typer.echo(f"{e.finding.code} {e.finding.severity.value}: {e.finding.message}\n      fix: {e.finding.fix}")
        if not found:
            typer.echo("no known peft/transformers/safetensors failure recognised in the text", err=True)
    raise typer.Exit(EXIT_CLEAN if found else EXIT_FINDINGS)


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
    for stream in (sys.stdout, sys.stderr):
        # A config may hold lone surrogates ("\ud800" is valid JSON); print them escaped, not crash.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        app()
    except KeyboardInterrupt:
        _fail("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug of ours must still end in one line and exit 2, not a traceback
        _fail(f"internal error: {type(exc).__name__}: {exc} (please report this)")
        sys.exit(EXIT_UNUSABLE)
