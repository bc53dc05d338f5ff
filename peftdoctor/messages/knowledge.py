"""What peftdoctor knows that a message alone does not say: key histories, engine tables, callers.

Used by causes.py to decide between the causes one message can have. Everything here reads data
peftdoctor already ships (the peft schemas, the engine tables, the catalogue's transformers keys).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional

from packaging.version import Version

from peftdoctor.peft import compat, releases
from peftdoctor.peft.compat import KeyHistory

# Arguments of huggingface_hub's download functions that old peft releases passed on to the config
# class together with the config's own keys (PeftConfig.from_pretrained(..., **kwargs)).
HUB_KWARGS = frozenset({"use_auth_token", "token", "revision", "cache_dir", "force_download", "resume_download",
                        "proxies", "local_files_only", "subfolder", "repo_type", "local_dir", "user_agent"})
# Loader options that model loaders (and tools built on them) pass to PeftModel.from_pretrained.
LOADER_KWARGS = frozenset({"dtype", "torch_dtype", "device_map", "load_in_8bit", "load_in_4bit", "max_memory",
                           "offload_folder", "low_cpu_mem_usage", "quantization_config", "attn_implementation"})

# Who called: a frame path or banner fragment (lower case) -> how the tool is named in advice.
CALLERS: tuple[tuple[str, str], ...] = (
    ("text-generation-webui", "text-generation-webui"), ("oobabooga", "text-generation-webui"),
    ("modules/lora.py", "text-generation-webui"), ("modules\\lora.py", "text-generation-webui"),
    ("unsloth", "unsloth"), ("llamafactory", "LLaMA-Factory"), ("llama-factory", "LLaMA-Factory"),
    ("llmtuner", "LLaMA-Factory"), ("axolotl", "axolotl"), ("site-packages/trl/", "trl"),
    ("site-packages\\trl\\", "trl"), ("swift/", "ms-swift"), ("autotrain", "AutoTrain"),
)
# The wrappers catalogued (scripts/generate_messages.py) -> their name in CALLERS.
WRAPPERS = {"unsloth": "unsloth", "unsloth_zoo": "unsloth", "llamafactory": "LLaMA-Factory", "axolotl": "axolotl"}
ZERO3_HINTS = ("zero3", "zero_3", "zero-3", "stage3", "stage 3", "deepspeed")


def callers(lowered: str) -> list[str]:
    return list(_callers(lowered))


@functools.lru_cache(maxsize=4)  # asked once per catalogue hit: a long text is scanned once (its hash is cached)
def _callers(lowered: str) -> tuple[str, ...]:
    found: list[str] = []
    for fragment, name in CALLERS:
        if fragment in lowered and name not in found:
            found.append(name)
    return tuple(found)


@functools.lru_cache(maxsize=8)  # asked per catalogue hit: a long text is scanned once per question
def mentions(lowered: str, words: tuple[str, ...]) -> bool:
    return any(w in lowered for w in words)


@functools.lru_cache(maxsize=None)
def config_classes() -> dict[str, str]:
    """Config class name -> peft_type, over every release (LoraConfig -> LORA)."""
    found: dict[str, str] = {}
    for release in releases.all_releases():
        for peft_type, name in release.info["config_classes"].items():
            found.setdefault(name, peft_type)
    return found


@functools.lru_cache(maxsize=None)
def tuner_models() -> frozenset[str]:
    """peft's tuner model classes, named after their config classes (LoraConfig -> LoraModel)."""
    return frozenset(name[:-len("Config")] + "Model" for name in config_classes() if name.endswith("Config"))


PEFT_BASES = frozenset({"PeftConfig", "PeftConfigMixin", "PromptLearningConfig", "PeftType"})


@dataclass(frozen=True)
class KeyStory:
    """What is known of a key named in an error text: which releases know it (compat.KeyHistory, for the
    peft_type given or any), and whether it belongs to a model config, the Hub or a loader instead."""

    key: str
    span: KeyHistory
    model_config: bool  # a transformers model/generation config key
    hub: bool
    loader: bool

    @property
    def first(self) -> Optional[Version]:
        return self.span.first

    @property
    def last(self) -> Optional[Version]:
        return self.span.last

    @property
    def known(self) -> bool:
        return self.span.known

    @property
    def legacy(self) -> bool:
        return self.span.legacy

    @property
    def introduced_later(self) -> bool:
        return self.first is not None and self.first > releases.known_versions()[0]


def key_story(key: str, peft_type: Optional[str] = None) -> KeyStory:
    known_type = peft_type is not None and any(peft_type in r.peft_types for r in releases.all_releases())
    span = compat.history(peft_type, key) if known_type else compat.history_any(key)
    return KeyStory(key, span, key in model_config_keys(), key in HUB_KWARGS, key in LOADER_KWARGS)


@functools.lru_cache(maxsize=1)
def model_config_keys() -> frozenset[str]:
    from peftdoctor.messages import catalogue

    return frozenset(catalogue.load().get("model_config_keys", ()))


def peft_api_since(name: str) -> Optional[str]:
    """The first peft release that defines the method `name` (merge_and_unload: 0.3.0), from the catalogue."""
    from peftdoctor.messages import catalogue

    return catalogue.load().get("peft_api_since", {}).get(name)


@functools.lru_cache(maxsize=None)
def engine_entries(engine: str, feature: str) -> tuple[tuple[str, str, str], ...]:
    """(releases, message, fix) of each engine-table row for `feature`."""
    from peftdoctor.engines import load_table

    return tuple((str(e.releases), e.message, e.fix) for e in load_table(engine).entries if e.feature == feature)


def engine_advice(engine: str, feature: str) -> str:
    """One line from the engine table: which releases do what, and the fix of the newest row."""
    rows = engine_entries(engine, feature)
    if not rows:
        return ""
    spans = "; ".join(f"{spec}: {message}" for spec, message, _ in rows[-2:])
    return f"{spans} (peftdoctor's {engine} table)"


def engine_fix(engine: str, feature: str, default: str) -> str:
    rows = engine_entries(engine, feature)
    return rows[-1][2] if rows else default


def looks_like_path(value: str) -> bool:
    """A local path rather than a Hub repo id (OWNER/NAME): more than one slash, ./ ../ ~ or a drive."""
    return bool(value.count("/") > 1 or "\\" in value or re.match(r"^(?:\.{1,2}[/\\]|~|[A-Za-z]:|/)", value))
