"""Predict what each peft release does when it loads a config, from the schemas alone."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

from packaging.version import Version

from peftdoctor.model.findings import Compatibility
from peftdoctor.peft import postinit, releases, targeting
from peftdoctor.peft import semantics as keys
from peftdoctor.peft.releases import Release

NOT_FOUND = ("ValueError: Target modules {targets} not found in the base model. Please check the target modules and "
             "try again.")


@dataclass(frozen=True)
class KeyHistory:
    """The releases that know a key for one peft_type: first and last, or None if none does."""

    first: Optional[Version]
    last: Optional[Version]

    @property
    def known(self) -> bool:
        return self.first is not None

    @property
    def legacy(self) -> bool:
        """Known once, unknown to the newest release: an old config's key, not a newer one's."""
        return self.last is not None and self.last < releases.known_versions()[-1]


@functools.lru_cache(maxsize=None)
def _histories(peft_type: str) -> dict[str, KeyHistory]:
    seen: dict[str, list[Version]] = {}
    for release in releases.all_releases():
        for key in release.fields(peft_type):
            seen.setdefault(key, []).append(release.version)
    return {k: KeyHistory(v[0], v[-1]) for k, v in seen.items()}


@functools.lru_cache(maxsize=None)
def _histories_any() -> dict[str, KeyHistory]:
    seen: dict[str, list[Version]] = {}
    for release in releases.all_releases():
        for key in {k for t in release.peft_types for k in release.fields(t)}:
            seen.setdefault(key, []).append(release.version)
    return {k: KeyHistory(v[0], v[-1]) for k, v in seen.items()}


def history_any(key: str) -> KeyHistory:
    """The releases that know `key` for any peft_type (an error text that does not say which)."""
    return _histories_any().get(key, KeyHistory(None, None))


def history(peft_type: object, key: str) -> KeyHistory:
    if not isinstance(peft_type, str):
        return KeyHistory(None, None)
    return _histories(peft_type).get(key, KeyHistory(None, None))


def default_of(peft_type: str, key: str) -> tuple[bool, Any]:
    """(has_default, default) from the newest release that knows the key."""
    return _defaults(peft_type).get(key, (False, None))


@functools.lru_cache(maxsize=None)
def _defaults(peft_type: str) -> dict[str, tuple[bool, Any]]:
    """Every key any release knows for `peft_type`, with the newest knowing release's default: one pass, so a
    config with 256,000 unknown keys costs 256,000 look-ups, not 256,000 walks over 36 schemas."""
    found: dict[str, tuple[bool, Any]] = {}
    for release in releases.all_releases():  # oldest first: newer releases overwrite
        for key, prop in release.fields(peft_type).items():
            found[key] = ("default" in prop, prop.get("default"))
    return found


def _same(a: Any, b: Any) -> bool:
    # JSON true must not equal 1: a bool where a number is expected is not the default.
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def noop_reason(config: dict[str, Any], key: str) -> Optional[str]:
    """Why dropping `key` changes nothing computed, or None when its value bears meaning."""
    value, peft_type = config[key], config.get("peft_type")
    if key in keys.METADATA_KEYS:
        return "metadata only"
    if key in keys.DEPENDENT_KEYS:
        controller, inert = keys.DEPENDENT_KEYS[key]
        if _same(config.get(controller, inert), inert):
            return f"inert while {controller} is {inert!r}"
    if key in keys.INIT_ONLY_KEYS and not is_base_mutating(value):
        return "initialisation only; the trained weights replace it"
    if isinstance(peft_type, str):
        has_default, default = default_of(peft_type, key)
        if has_default and _same(value, default):
            return f"equals the default {default!r}"
    return None


def is_base_mutating(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(keys.BASE_MUTATING_INITS)


def predict(release: Release, config: dict[str, Any], noops: Optional[dict[str, Optional[str]]] = None,
            seen: Optional[dict[str, bool]] = None) -> Compatibility:
    """What `release` does when PeftModel.from_pretrained loads this config.

    `noops` maps keys to noop_reason(config, key) and `seen` remembers post-init clause verdicts:
    compatibility() shares both across all releases.
    """
    name = release.name
    peft_type = config.get("peft_type")
    if "peft_type" not in config:
        return Compatibility(name, "fails", error="KeyError: 'peft_type'")
    if not isinstance(peft_type, str) or peft_type not in release.peft_types:
        error = release.info["unknown_peft_type_error"].replace("{peft_type}", str(peft_type))
        return Compatibility(name, "fails", error=error)
    unknown = _unknown(release, peft_type, tuple(config))
    message = release.info.get("unknown_key_message")
    if unknown and release.unknown_keys == "raise":
        error = message.replace("{config_class}", release.config_class(peft_type)).replace("{key}", unknown[0])
        return Compatibility(name, "fails", error=error)
    refusal = _refusal(release, peft_type, config)
    if refusal:
        return Compatibility(name, "fails", error=refusal)
    task_error = _task_type_error(release, config.get("task_type"))
    if task_error:
        return Compatibility(name, "fails", error=task_error)
    post_init_error = postinit.refusal(release, peft_type, config, seen)
    if post_init_error:
        return Compatibility(name, "fails", error=post_init_error)
    regex_errors = targeting.pattern_errors(config, release.version, release.fields(peft_type))
    if regex_errors:  # raised while the layers are built, after the config loaded
        return Compatibility(name, "fails", error=f"re.error: {regex_errors[0][2]}")
    targets = config.get("target_modules")
    if targeting.names_all_linear(targets) and not targeting.is_all_linear(targets, release.version):
        # before 0.8.0 "all-linear" is a regex no module name fullmatches (peft/tuners/tuners_utils.py, lora.py)
        return Compatibility(name, "fails", error=NOT_FOUND.format(targets=targets))
    if unknown:
        warning = None
        if release.unknown_keys == "warn" and message:
            warning = (message.replace("{config_class}", release.config_class(peft_type))
                       .replace("['{key}']", str(sorted(unknown))).replace("{key}", ", ".join(unknown)))
        noops = noops if noops is not None else {k: noop_reason(config, k) for k in unknown}
        lost = tuple((k, keys.LOSS_IF_DROPPED.get(k, keys.DEFAULT_LOSS)) for k in unknown if noops[k] is None)
        return Compatibility(name, "drops_keys", dropped=unknown, warning=warning, lost=lost)
    return Compatibility(name, "ok")


@functools.lru_cache(maxsize=4096)
def _unknown(release: Release, peft_type: str, keys_in_order: tuple[str, ...]) -> tuple[str, ...]:
    """The config's keys `release` does not know for `peft_type` (the checkpoints of one run share their
    keys: scan asks this 36 times per adapter)."""
    known = release.fields(peft_type)
    return tuple(k for k in keys_in_order if k not in known)


def _refusal(release: Release, peft_type: str, config: dict[str, Any]) -> Optional[str]:
    for refused_type, missing_key, since, error in keys.LOAD_REFUSALS:
        if peft_type == refused_type and missing_key not in config and release.version >= Version(since):
            return error
    return None


def _task_type_error(release: Release, task_type: Any) -> Optional[str]:
    probe = release.info.get("unknown_task_type") or {}
    if task_type is None or probe.get("result") != "raise" or task_type in release.info.get("task_types", ()):
        return None
    return (probe.get("message") or "").replace("{task_type}", str(task_type)) or None


def compatibility(config: dict[str, Any], read_error: Optional[str] = None) -> tuple[Compatibility, ...]:
    """What each release does with the config; `read_error`: what every release raises reading the file
    itself (Adapter.config_peft_error: from_json_file is `json.load(open(path))` in all of them)."""
    if read_error is not None:
        return tuple(Compatibility(r.name, "fails", error=read_error) for r in releases.all_releases())
    noops = {k: noop_reason(config, k) for k in config}
    seen: dict[str, bool] = {}
    return tuple(predict(r, config, noops, seen) for r in releases.all_releases())


@dataclass(frozen=True)
class WrittenBy:
    """Which peft wrote a config: its peft_version exactly, or the range its keys imply (a value,
    parsed once; str() is the form reports show: "0.13.2", ">=0.9.0", ">=0.1.0,<=0.2.0")."""

    exact: Optional[Version] = None
    at_least: Optional[Version] = None  # the newest first release among its keys
    at_most: Optional[Version] = None  # the oldest last release among its legacy keys

    def __str__(self) -> str:
        if self.exact is not None:
            return str(self.exact)
        bound = f">={self.at_least}"
        return f"{bound},<={self.at_most}" if self.at_most is not None else bound


def written_by(config: dict[str, Any]) -> Optional[WrittenBy]:
    """The release that wrote the config: its peft_version, else the range its keys imply."""
    version = releases.parse_version(config.get("peft_version"))
    if version is not None:
        return WrittenBy(exact=version)
    peft_type = config.get("peft_type")
    spans = [history(peft_type, k) for k in config]
    firsts = [h.first for h in spans if h.first is not None]
    lasts = [h.last for h in spans if h.legacy and h.last is not None]
    if not firsts:
        return None
    return WrittenBy(at_least=max(firsts), at_most=min(lasts) if lasts else None)
