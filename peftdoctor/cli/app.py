"""The command line: parse options, call the core, render, pick the exit code. Nothing else lives here.

Operations return frozen values and raise the exceptions of peftdoctor.errors; _Commands.invoke is
the one place that turns an exception into its one line on stderr and its exit code (errors.EXIT_CODES),
and render/ the one place that turns a result into text.

When the reader of stdout goes away (`peftdoctor scan . | head`), the command ends quietly with exit 0,
as ripgrep does (crates/core/main.rs: a broken pipe is "a graceful exit"); git, killed by SIGPIPE,
reports 141. Nothing more can reach the reader, and a "Broken pipe" line would only be noise.
"""
from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import typer
from typer.core import TyperGroup

try:  # typer 0.28 carries its own click; older releases use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from peftdoctor import __version__, errors
from peftdoctor.errors import EXIT_CLEAN, EXIT_FINDINGS, EXIT_INTERRUPTED, EXIT_UNUSABLE, UsageError
from peftdoctor.io.adapter import open_adapter
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.model.findings import Report, Severity
from peftdoctor.model.results import Checks
from peftdoctor.ops.check import check as run_check
from peftdoctor.ops.check import server_settings
from peftdoctor.ops.combine import COMBINATIONS, Combination, combine
from peftdoctor.render import (
    CHECK,
    CHECKS,
    EXPLAINED,
    FIXED_COPY,
    FIXES,
    MERGE,
    PLAN,
    SCAN,
    VERIFY,
    formats,
    render,
    render_to,
    require_format,
)
from peftdoctor.render.terminal import line
from peftdoctor.rules.registry import markdown_table

WEIGHT_NAMES = (SAFETENSORS_NAME, PICKLE_NAME)
# explain keeps the end of a longer log: the traceback that matters is printed last.
EXPLAIN_MAX_BYTES = 32 * 1024 * 1024


class _Commands(TyperGroup):
    """Every command runs through here: the one place an exception becomes its line and exit code
    (errors.EXIT_CODES), so `python -m peftdoctor`, the console script and typer's test runner agree."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except KeyboardInterrupt:
            _fail("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _drop_stdout()
            raise typer.Exit(EXIT_CLEAN) from None
        except Exception as exc:  # noqa: BLE001 - a bug of ours must still end in one line and exit 2
            _fail(_describe(exc))
            raise typer.Exit(errors.exit_code(exc) or EXIT_UNUSABLE) from None


app = typer.Typer(cls=_Commands, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Diagnose and fix PEFT adapters before they fail to load or silently change meaning.")


class FailOn(str, enum.Enum):
    error = "error"
    warning = "warning"
    info = "info"


def _fail(message: str) -> None:
    """One line on stderr; whatever a path, key or Hub answer in it holds is shown escaped (render.terminal)."""
    typer.echo(f"peftdoctor: {line(message)}", err=True)


def _describe(exc: BaseException, where: str = "") -> str:
    """The one line for `exc`: its errors.EXIT_CODES entry's, or an internal error naming its type."""
    if errors.exit_code(exc) is None:
        return f"{where}internal error: {type(exc).__name__}: {errors.one_line(exc)} (please report this)"
    return errors.one_line(exc)


def _emit(text: str, err: bool = False) -> None:
    """Write a rendered result. A failed write says which stream and why (its OSError names no file:
    "[Errno 28] No space left on device" for `> /dev/full`); a closed pipe goes on to _Commands."""
    try:
        typer.echo(text, nl=False, err=err)
    except BrokenPipeError:
        raise
    except OSError as exc:
        if not err:
            _drop_stdout()  # what is still buffered would fail again at exit, and say so a second time
        raise errors.WriteFailed(errors.os_reason(exc, "standard error" if err else "standard output")) from None


def _drop_stdout() -> None:
    """stdout cannot be written (its reader has gone, the disk is full): point it at /dev/null, so that what
    is still buffered is dropped there when Python flushes at exit instead of failing again ("Exception
    ignored ... BrokenPipeError" and exit 120)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file descriptor (typer's test runner): nothing is flushed to a pipe at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _adapters(paths: List[str]) -> List[str]:
    """The adapters named by `paths`, each once: a weights file names its directory, because pre-commit
    passes the files that changed and a commit may change only the weights (or weights and config)."""
    chosen: dict[str, str] = {}
    for path in paths:
        name = os.path.basename(path)
        target = (os.path.dirname(path) or ".") if name in WEIGHT_NAMES and os.path.isfile(path) else path
        key = os.path.realpath(os.path.dirname(target) if name == CONFIG_NAME else target)
        chosen.setdefault(key if os.path.exists(target) else target, target)
    return list(chosen.values())


# Options several commands share, declared once.
JUDGE_FOR = typer.Option(None, "--peft", help="Judge for this peft release instead of the installed one.")
FAIL_ON = typer.Option(FailOn.error, "--fail-on", help="Lowest severity that makes the exit code 1.")
MAX_LORA_RANK = typer.Option(None, "--max-lora-rank", help="The serving engine's --max-lora-rank (with --target; "
                             "default: the engine's default limit).")


def _format(result_type: str) -> Any:
    """--format, offering what the registry can write for this command's result (others: exit 2)."""
    return typer.Option("text", "--format", help=" or ".join(formats(result_type)) + ".")


@app.command()
def check(
    paths: List[str] = typer.Argument(..., help="Adapter directories, adapter_config.json files, or OWNER/NAME[@REV]."),
    peft: Optional[str] = JUDGE_FOR,
    fmt: str = _format(CHECK),
    fail_on: FailOn = FAIL_ON,
    combine_as: Optional[str] = typer.Option(None, "--combine", help="Also say whether these adapters can be "
                                             "combined by add_weighted_adapter: linear, ties, svd, cat, ..."),
    serve: Optional[str] = typer.Option(None, "--target", help="Also judge for a serving engine: vllm, sglang or "
                                        "tgi, optionally ==VERSION."),
    base: Optional[str] = typer.Option(None, "--base", help="Judge against this base (directory or cached repo "
                                       "id; default: base_model_name_or_path when it is local or cached)."),
    transformers: Optional[str] = typer.Option(None, "--transformers", help="Judge for this transformers release "
                                               "instead of the installed one."),
    max_lora_rank: Optional[int] = MAX_LORA_RANK,
) -> None:
    """Check adapters against the schemas of every peft release."""
    require_format((CHECK, CHECKS), fmt)
    server_settings(serve, max_lora_rank)
    if combine_as is not None and combine_as not in COMBINATIONS:
        raise UsageError(f"--combine {combine_as!r}: use one of {', '.join(COMBINATIONS)}")
    reports: list[Report] = []
    adapters: list[Adapter] = []
    unusable = False
    for path in _adapters(paths):
        try:
            adapters.append(open_adapter(path, online=True))  # read once: check and --combine both judge it
            if adapters[-1].note:
                _fail(adapters[-1].note)
            reports.append(run_check(adapters[-1], peft=peft, serve=serve, base=base,
                                     transformers=transformers, max_lora_rank=max_lora_rank))
        except Exception as exc:  # noqa: BLE001 - one adapter's failure (or a bug of ours) keeps the others' reports
            _fail(_describe(exc, f"{path}: "))
            unusable = True
    combination = _combination(adapters, reports, combine_as) if combine_as and not unusable else None
    if reports:
        single = len(reports) == 1 and not combination
        _emit(render(reports[0] if single else Checks(tuple(reports), combination), fmt))
    threshold = Severity(fail_on.value)
    if unusable or any(r.kind != "peft-adapter" for r in reports):
        raise typer.Exit(EXIT_UNUSABLE)
    failed = any(r.fails_at(threshold) for r in reports) or (combination is not None and not combination.possible)
    raise typer.Exit(EXIT_FINDINGS if failed else EXIT_CLEAN)


def _combination(adapters: list[Adapter], reports: list[Report], combine_as: str) -> Optional[Combination]:
    configs = [a.config for a in adapters]
    if any(c is None for c in configs):
        return None  # an unreadable config is already a finding of its own report
    return combine(reports, [c for c in configs if c is not None], combine_as)


@app.command()
def fix(
    paths: List[str] = typer.Argument(..., help="Adapter directories or their adapter_config.json files."),
    peft: Optional[str] = typer.Option(None, "--peft", help="Rewrite for this peft release instead of the installed one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; write nothing."),
    show_diff: bool = typer.Option(False, "--diff", help="Print a unified diff of the rewrite (patch -p1 applies it "
                                   "in the adapter directory); write nothing."),
    check_only: bool = typer.Option(False, "--check", help="Exit 1 if a fix would change a file; write nothing."),
    backup_suffix: Optional[str] = typer.Option(None, "--backup-suffix", help="Keep the original as FILE+SUFFIX "
                                                "(default .orig; '' for none)."),
    force: bool = typer.Option(False, "--force", help="Also drop meaning-bearing keys the target cannot express."),
    fmt: str = _format(PLAN),
    serve: Optional[str] = typer.Option(None, "--target", help="Also rewrite for a serving engine (vllm, sglang, "
                                        "tgi[==VERSION]) so that it computes what peft computes."),
    out: Optional[str] = typer.Option(None, "--out", help="Write a fixed, checked copy of the adapter's top-level "
                                      "files to this new (or empty) directory; the original is not touched."),
    link: bool = typer.Option(False, "--link", help="With --out: hard-link the unchanged files where the "
                              "filesystem allows (else copy them)."),
    max_lora_rank: Optional[int] = MAX_LORA_RANK,
) -> None:
    """Rewrite adapter_config.json so it loads under a peft release and computes the same thing."""
    if out is not None:
        _fix_out(paths, out, backup_suffix, (dry_run, show_diff, check_only), fmt, peft=peft, serve=serve,
                 force=force, link=link, max_lora_rank=max_lora_rank)
    if link:
        raise UsageError("--link applies to --out only")
    require_format((PLAN, FIXES), fmt)
    server_settings(serve, max_lora_rank)
    backup_suffix = ".orig" if backup_suffix is None else backup_suffix
    # Imported here so that `check`, the hook that runs on every commit, does not pay for them.
    from peftdoctor.io.atomic import backup_path
    from peftdoctor.model.results import Fixes
    from peftdoctor.ops.fix import apply, diff
    from peftdoctor.ops.fix import plan as make_plan
    from peftdoctor.render.fix import written

    backup_path(Path(CONFIG_NAME), backup_suffix)  # a suffix that cannot name a file: a usage error, up front
    plans, codes = [], [EXIT_CLEAN]
    for path in _adapters(paths):
        try:
            plans.append(make_plan(path, peft=peft, force=force, serve=serve, max_lora_rank=max_lora_rank))
        except Exception as exc:  # noqa: BLE001 - one adapter's failure (or a bug of ours) keeps the others' plans
            _fail(_describe(exc, f"{path}: "))
            codes.append(EXIT_UNUSABLE)
    if plans:
        # With --check (a hook) or --diff (for patch), stdout is kept for the verdict or the diff alone.
        aside = fmt == "text" and (check_only or show_diff)
        _emit(render(plans[0] if len(plans) == 1 else Fixes(tuple(plans)), fmt), err=aside)
    for the_plan in plans:
        if show_diff:
            _emit(diff(the_plan))
        if the_plan.remaining:  # written or not, an adapter that still cannot work is not a clean exit
            codes.append(EXIT_FINDINGS)
        if the_plan.refused:
            codes.append(EXIT_FINDINGS)
        elif check_only or dry_run or show_diff:
            codes.append(EXIT_FINDINGS if check_only and the_plan.changed else EXIT_CLEAN)
        else:
            try:
                done = apply(the_plan, backup_suffix or None)
            except errors.WriteRefused as exc:  # a lost race included: the other run's write stands, this one says so
                _fail(errors.one_line(exc))
                codes.append(EXIT_UNUSABLE)
                continue
            for note in done.notes:
                _fail(note)
            if the_plan.changed and fmt == "text":
                typer.echo(written(the_plan, str(done.backup) if done.backup else None), err=True)
    raise typer.Exit(max(codes))


def _fix_out(paths: List[str], out: str, backup_suffix: Optional[str], write_nothing: tuple[bool, bool, bool], fmt: str,
             **options: Any) -> None:
    """fix --out: one adapter, a fixed copy at `out`; exit 0 when written, 1 when refused or still broken."""
    from peftdoctor.ops.fix_copy import fix_copy

    if len(paths) != 1:
        raise UsageError(f"--out takes one adapter ({len(paths)} given): each copy needs its own directory")
    if any(write_nothing):
        raise UsageError("--out writes a copy: it cannot be combined with --dry-run, --diff or --check")
    if backup_suffix is not None:
        raise UsageError("--out never rewrites the original, so there is no backup: drop --backup-suffix")
    require_format((FIXED_COPY,), fmt)
    copy = fix_copy(paths[0], out, **options)
    for note in copy.notes:
        _fail(note)
    _emit(render(copy, fmt))
    if fmt != "text" and not copy.written:
        for reason in copy.errors:
            _fail(f"nothing written at {out}: {reason}")
    raise typer.Exit(EXIT_CLEAN if copy.written else EXIT_FINDINGS)


# Without it transformers never runs a base's own code, and never asks on stdin (it is told no).
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the base "
                                 "(read it first); without it such code never runs.")


@app.command()
def verify(
    adapter: str = typer.Argument(..., help="Adapter directory (or cached hub repo id)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model path or cached repo id (default: "
                                       "base_model_name_or_path)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    out: Optional[str] = typer.Option(None, "--out", help="Save the merged model here (must not exist or be empty)."),
    fmt: str = _format(VERIFY),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Largest relative logit difference allowed."),
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    merged: Optional[str] = typer.Option(None, "--merged", help="Judge this merged model (made by any tool) "
                                         "against base + adapter, tensor by tensor, instead of merging."),
    offload_folder: Optional[str] = typer.Option(None, "--offload-folder", help="A base too large for memory is "
                                                 "loaded with accelerate (device_map=auto), what does not fit "
                                                 "offloaded to disk here; without it: layer by layer."),
    load_only: bool = typer.Option(False, "--load-only", help="Only attach the adapter with the installed peft to "
                                   "the base built on the meta device from its config.json (no weights read, "
                                   "seconds for any size) and report which saved tensors and modules peft applied: "
                                   "applies, partial, base-only, random or fails."),
) -> None:
    """Load base + adapter on the target device, merge, compare, and save a deployable merged model.

    With --merged DIR: judge a merged model made elsewhere, tensor by tensor in bounded memory (delta
    missing, wrong scale and its factor, applied twice, extra changes); exit 0 only when it is right.
    A base too large for memory: loaded with accelerate (device_map=auto) across the GPUs, the CPU and
    --offload-folder when given, else verified layer by layer; step `memory` says which path ran.
    With --load-only: what peft applies of the adapter (missing and unexpected keys, modules left without
    weights), on a base never materialised; exit 0 only when the whole adapter applies."""
    from peftdoctor.cli.heavy import library_output_to_stderr, progress, require_extra

    require_format((VERIFY,), fmt)
    require_extra("verify")
    from peftdoctor.verification.run import verify as run_verify  # the heavy stack loads only here

    display, say = progress(fmt == "text")
    with library_output_to_stderr(), display:
        report = run_verify(adapter, base=base, device=device, dtype=dtype, out=out, tolerance=tolerance,
                            trust_remote_code=trust_remote_code, progress=say, merged=merged,
                            offload_folder=offload_folder, load_only=load_only)
    _emit(render(report, fmt))
    # 0 only when verified (or, load-only, applied whole): a run that could not verify must not pass a CI gate.
    raise typer.Exit(EXIT_CLEAN if report.verdict in ("verified", "applies") else EXIT_FINDINGS)


@app.command()
def merge(
    adapter: str = typer.Argument(..., help="LoRA adapter directory (or cached hub repo id)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model directory or cached repo id with "
                                       "safetensors shards (default: base_model_name_or_path)."),
    out: str = typer.Option(..., "--out", help="Directory to write the merged model to (new, or empty)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]: where each layer's delta is computed."),
    fmt: str = _format(MERGE),
    allow_noop: bool = typer.Option(False, "--allow-noop", help="Merge even an adapter whose every lora_B is "
                                    "zero (the result equals the base)."),
    trust_remote_code: bool = TRUST_REMOTE_CODE,
) -> None:
    """Merge a LoRA adapter into a base shard by shard, tensor by tensor: peak memory about one shard.

    Exit codes: 0 merged; 1 refused (a valid adapter this command cannot merge exactly); 2 unusable
    input or a failed write (missing or damaged base/adapter, --out exists, disk full)."""
    from peftdoctor.cli.heavy import library_output_to_stderr, require_extra, say

    require_format((MERGE,), fmt)
    require_extra("verify")
    from peftdoctor.merge.run import stream_merge  # imports torch only once the inputs have been read

    with library_output_to_stderr():
        report = stream_merge(adapter, base, out, dtype=dtype, device=device,
                              progress=say if fmt == "text" else None, allow_noop=allow_noop,
                              trust_remote_code=trust_remote_code)
    _emit(render(report, fmt))
    raise typer.Exit(EXIT_CLEAN)


@app.command()
def scan(
    root: Optional[str] = typer.Argument(None, help="A tree to search for adapters (training output, a monorepo)."),
    peft: Optional[str] = JUDGE_FOR,
    fmt: str = _format(SCAN),
    fail_on: FailOn = FAIL_ON,
    hub: Optional[str] = typer.Option(None, "--hub", help="Instead of a tree: every adapter repo of this Hub user "
                                      "or organisation (config and weights header only)."),
    from_file: Optional[str] = typer.Option(None, "--from-file", help="Instead of a tree: the Hub repos named in "
                                            "this file, one OWNER/NAME[@REV] per line."),
) -> None:
    """Check every adapter under a directory tree (or on the Hub) and summarise the findings, worst first."""
    require_format((SCAN,), fmt)
    import tempfile

    from peftdoctor.ops import scan as scanning

    if sum(x is not None for x in (root, hub, from_file)) != 1:
        raise UsageError("scan: give one of a directory, --hub AUTHOR or --from-file FILE")
    with tempfile.TemporaryDirectory(prefix="peftdoctor-scan-") as scratch:
        if root is not None:
            # JSON holds every full report: spooled to disk as they are made, so memory stays bounded.
            result = scanning.scan(root, peft=peft, spool=os.path.join(scratch, "reports.jsonl")
                                   if fmt == "json" else None)
        else:
            from peftdoctor.ops import hub_scan

            # As for a tree, and lighter: SARIF needs each finding's text, JSON reads the spool, text the codes.
            kept = dict(spool=os.path.join(scratch, "reports.jsonl") if fmt == "json" else None, light=fmt != "sarif")
            result = (hub_scan.scan_hub(hub, peft=peft, progress=_progress(), **kept) if hub is not None else
                      hub_scan.scan_repos(str(from_file), hub_scan.read_repo_list(str(from_file)), peft=peft,
                                          progress=_progress(), **kept))
        render_to(result, fmt, _emit)
    raise typer.Exit(EXIT_FINDINGS if result.fails_at(Severity(fail_on.value)) else EXIT_CLEAN)


def _progress():  # noqa: ANN202 - ops.hub_scan.Progress
    """Progress of a Hub scan on stderr: notes as they come, a count at most every second and at the end."""
    import time

    last = [0.0]

    def report(done: int, total: Optional[int], ref: str, note: Optional[str]) -> None:
        if note:
            _fail(note)
        now = time.monotonic()
        if done == total or now - last[0] >= 1.0:
            last[0] = now
            counted = f"{done} repos (still listing)" if total is None else f"{done}/{total} repos"
            typer.echo(f"peftdoctor: checked {counted}", err=True)

    return report


@app.command()
def explain(
    source: str = typer.Argument("-", help="A file holding the error text or traceback, or - for standard input."),
    fmt: str = _format(EXPLAINED),
    adapter: Optional[str] = typer.Option(None, "--adapter", metavar="DIR",
                                          help="The adapter the error is about: its check makes the answer precise."),
) -> None:
    """Map an error text from loading or merging an adapter to its finding code and fix."""
    require_format((EXPLAINED,), fmt)
    from peftdoctor.io.files import read_stream_tail
    from peftdoctor.ops.explain import explain_source

    raw, _cut = read_stream_tail(source, EXPLAIN_MAX_BYTES, stdin=sys.stdin.buffer)
    found = explain_source(raw.decode("utf-8", errors="replace"), source, adapter)
    _emit(render(found, fmt))
    if not found.explanations:
        _fail("no known peft/transformers/safetensors failure recognised in the text")
    raise typer.Exit(EXIT_CLEAN if found.explanations else EXIT_FINDINGS)


@app.command()
def rules(fmt: str = typer.Option("text", "--format", help="text, json or markdown.")) -> None:
    """List every finding code with its default severity and meaning."""
    from peftdoctor.render import rules as listing

    writers = {"text": listing.render_text, "json": listing.render_json, "markdown": markdown_table}
    if fmt not in writers:
        raise UsageError(f"--format {fmt!r}: use text, json or markdown")
    _emit(writers[fmt]())


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(f"peftdoctor {__version__}")
        raise typer.Exit(EXIT_CLEAN)


def run(argv: Sequence[str]) -> int:
    """Run the command line `argv` in this process and return its exit code (merge_command, verify_command)."""
    try:
        code = app(args=list(argv), prog_name="peftdoctor", standalone_mode=False)
    except ClickException as exc:  # a usage error of click's own: it prints as the CLI would
        exc.show()
        return exc.exit_code
    except typer.Abort:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_CLEAN


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a lone surrogate from a config prints as \udXXX, never crashes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        app(prog_name="peftdoctor")
    except KeyboardInterrupt:  # while starting up, before a command runs (then _Commands has it)
        _fail("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        # Help and usage errors are printed by rich or click before a command runs; on a closed pipe both
        # point stdout at /dev/null and exit 1 from inside their `except BrokenPipeError`.
        if isinstance(exc.__context__, BrokenPipeError):
            sys.exit(EXIT_CLEAN)
        raise
    finally:
        _flush_stdout()


def _flush_stdout() -> None:
    """Flush stdout here rather than in Python's shutdown, where a failure only prints "Exception ignored"."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        sys.exit(EXIT_CLEAN)
    except OSError as exc:
        _drop_stdout()
        _fail(errors.os_reason(exc, "standard output"))
        sys.exit(EXIT_UNUSABLE)
