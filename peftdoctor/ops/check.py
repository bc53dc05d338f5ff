"""`check`: read an adapter, judge it for one peft release, predict every release's load result."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from peftdoctor.errors import UnusableInput, UsageError
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.base import find_base_config
from peftdoctor.model.adapter import CONFIG_NAME, Adapter
from peftdoctor.model.base import Base
from peftdoctor.model.findings import Finding, Report
from peftdoctor.peft import compat, releases, transformers_axis, verdicts
from peftdoctor.peft.releases import Release
from peftdoctor.rules import Check, Context
from peftdoctor.rules.application import application_findings, lora_tensors, tree_of
from peftdoctor.rules.axis import axis_findings
from peftdoctor.rules.base import base_findings
from peftdoctor.rules.kind import kind_findings
from peftdoctor.rules.registry import rule
from peftdoctor.rules.schema import encoding_findings, pattern_findings, peft_type_findings, value_findings
from peftdoctor.rules.traps import (
    all_linear_unknown,
    base_mutating_init,
    base_not_portable,
    oft_weights_changed,
    tied_layer_adapted,
    version_findings,
)
from peftdoctor.rules.unknown_keys import unknown_key_findings
from peftdoctor.rules.weights import pointer_finding, weight_findings

if TYPE_CHECKING:  # the engine tables load only when a --target asks for them
    from peftdoctor.engines import Target

CONFIG_CHECKS: tuple[Check, ...] = (
    encoding_findings, peft_type_findings, value_findings, pattern_findings, unknown_key_findings, version_findings,
    base_mutating_init, base_not_portable, oft_weights_changed, tied_layer_adapted, all_linear_unknown,
)


def _shown(value: object) -> Optional[str]:
    return str(value) if value is not None else None


def refused_findings(adapter: Adapter) -> list[Finding]:
    """PD006/PD007 for each entry the file rules (io.files) refuse: links out of the directory, fifos, devices."""
    return [rule("PD006").finding(f"{name} is a symlink pointing outside the adapter directory; not read",
                                  "replace the link with the file itself", file=name)
            if why.startswith("is a symlink") else
            rule("PD007").finding(f"{name} {why}", "replace it with the regular file saved by save_pretrained()",
                                  file=name)
            for name, why in adapter.refused.items()]


def choose_target(peft: Optional[str]) -> tuple[Release, list[Finding]]:
    """The release to judge by: --peft, else the installed peft, else the newest known one."""
    installed = releases.installed_peft()
    wanted = peft or installed
    newest = releases.known_versions()[-1]
    if wanted is None:
        return releases.load(newest), [rule("PD117").finding(
            f"peft is not installed; judged against the newest known release {newest}",
            "install the peft you deploy with, or pass --peft VERSION")]
    version = releases.parse_version(wanted)
    if version is None:
        raise UnusableInput(f"--peft {wanted!r} is not a version")
    stand_in = releases.closest_known(version)
    if stand_in is None:
        raise UnusableInput(f"peft {wanted} is older than every known release ({releases.known_versions()[0]})")
    notes = []
    if stand_in != version:
        notes.append(rule("PD117").finding(
            f"no schema for peft {wanted}; judged against peft {stand_in}, the closest older release",
            "upgrade peftdoctor for a schema of that release"))
    return releases.load(stand_in), notes


def choose_for_engine(peft: Optional[str], engine: Optional["Target"]) -> tuple[Release, list[Finding]]:
    """choose_target, where an engine release that parses the config with the peft it pins (TGI) decides the
    release unless --peft does; the PD457 note says which."""
    if engine is None:
        return choose_target(peft)
    from peftdoctor.engines import peft_pin

    pin = peft_pin(engine, releases.known_versions())
    release, notes = choose_target(peft or (pin.release if pin else None))
    note = pin.note(peft is not None, release.name) if pin else None
    return release, notes + ([note] if note else [])


def find_base(config: dict, given: Optional[str], online: bool = False) -> tuple[Optional[Base], Optional[str]]:
    """The base's config.json (from --base, else base_model_name_or_path), or why there is none. `online`:
    a Hub adapter's base is fetched too (its config.json alone, into the cache the engine rules read)."""
    if given is not None:
        found = find_base_config(given, online=True)
        if found is None:
            raise UnusableInput(f"--base {given!r}: no config.json there, nor on the Hub or in its local cache")
        return found, None
    name = config.get("base_model_name_or_path")
    found = find_base_config(name, online=online)
    if found is not None:
        return found, None
    if not isinstance(name, str) or not name:
        return None, "base_model_name_or_path is empty; pass --base PATH_OR_REPO_ID"
    return None, f"the base {name!r} is neither a local directory nor in the local hub cache; pass --base"


def server_settings(serve: Optional[str], max_lora_rank: Optional[int]) -> dict[str, int]:
    """The serving engine's flags the user named, as the engine rules' `settings`. A limit without an
    engine to hold it to, below 1, or one the engine release cannot start with is a usage error."""
    if max_lora_rank is None:
        return {}
    if serve is None:
        raise UsageError(f"--max-lora-rank {max_lora_rank}: name the engine it is the limit of with --target")
    if isinstance(max_lora_rank, bool) or not isinstance(max_lora_rank, int) or max_lora_rank < 1:
        raise UsageError(f"--max-lora-rank {max_lora_rank!r}: a positive whole number")
    from peftdoctor.engines import parse_target, require_settings

    settings = {"max_lora_rank": max_lora_rank}
    require_settings(parse_target(serve), settings)
    return settings


def check(target: Union[str, Adapter], peft: Optional[str] = None, serve: Optional[str] = None,
          base: Optional[str] = None, transformers: Optional[str] = None,
          max_lora_rank: Optional[int] = None) -> Report:
    """Check the adapter at `target` (directory, adapter_config.json path, OWNER/NAME[@REVISION] on the
    Hub, or an Adapter already read by io.adapter.open_adapter) for the peft release `peft` and, with
    `serve` ("vllm", "sglang==0.4.0", "tgi", ...), for that engine; against the base `base` (a directory
    or a repo id, whose config.json alone is fetched; default: base_model_name_or_path when found locally),
    under the transformers release `transformers` (default: the installed one, else the newest known).
    `max_lora_rank`: the server's --max-lora-rank, when known (else the engine's default is assumed).

    Raises UnusableInput when there is nothing to check at all.
    """
    engine = None
    if serve is not None:
        from peftdoctor.engines import parse_target  # only when asked: its tables are not free to load

        engine = parse_target(serve)
    settings = server_settings(serve, max_lora_rank)
    adapter = target if isinstance(target, Adapter) else open_adapter(target, online=True)
    release, findings = choose_for_engine(peft, engine)
    shown = dict(path=adapter.display, peft_installed=releases.installed_peft(), peft_target=release.name)
    if adapter.kind != "peft-adapter":
        return Report(**shown, findings=tuple(kind_findings(adapter)), kind=adapter.kind)
    findings += refused_findings(adapter)
    if adapter.config is None:
        if CONFIG_NAME in adapter.lfs_pointers:
            findings.append(pointer_finding(CONFIG_NAME))
        elif adapter.config_error and CONFIG_NAME not in adapter.refused:
            findings.append(rule("PD101").finding(f"{CONFIG_NAME} {adapter.config_error}",
                                                  "restore the file saved by save_pretrained()", file=CONFIG_NAME))
        weights, skipped = weight_findings(adapter, None)
        return Report(**shown, findings=tuple(findings + weights), skipped=tuple(skipped))
    judged_for, stand_in = transformers_axis.choose(transformers)
    ctx = Context(adapter, adapter.config, release, *find_base(adapter.config, base, adapter.origin == "hub"),
                  transformers=judged_for)
    for config_check in CONFIG_CHECKS:
        findings += config_check(ctx)
    weights, skipped = weight_findings(adapter, adapter.config, release)
    tree, tree_note = tree_of(ctx)
    applied, applied_notes = application_findings(ctx, tree, tree_note)
    on_base, base_skipped = base_findings(ctx)
    weights += applied + on_base + axis_findings(ctx, chosen=transformers is not None)
    skipped += base_skipped + applied_notes
    skipped += [stand_in] if stand_in and transformers is not None else []  # --transformers has no tables of its own
    if engine is not None:
        from peftdoctor.engines import target_findings

        weights += target_findings(adapter, adapter.config, engine, ctx.base, settings)
    everything = tuple(findings + weights)
    judged = verdicts.judge(compat.compatibility(adapter.config, adapter.config_peft_error), everything, release.name,
                            ctx.transformers, lora_tensors(ctx), adapter.config, tree)
    return Report(**shown, findings=everything, compatibility=judged,
                  written_by=_shown(compat.written_by(adapter.config)), skipped=tuple(skipped))
