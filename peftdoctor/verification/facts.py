"""What verify needs to know before importing torch, read from the one Adapter and Base models
(io/adapter.py, io/base.py): which adapter and base, and what the adapter's saved shapes say."""
from __future__ import annotations

from typing import Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.base import open_base
from peftdoctor.io.files import require_safe
from peftdoctor.io.locate import resolve
from peftdoctor.model.adapter import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, Adapter
from peftdoctor.model.base import Base

# Prompt-learning methods prepend learned tokens or key/value prefixes: there is no weight matrix
# to fold them into, so they are deployed as PeftModel and only load + forward can be verified.
NOT_MERGEABLE = frozenset({"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING",
                           "ADAPTION_PROMPT", "CPT"})


class BaseUnavailable(Exception):
    """The base cannot be found here: verification is skipped (not unusable input), with this reason."""


def mergeable(adapter: Adapter) -> bool:
    return adapter.peft_type not in NOT_MERGEABLE


def _within(module: str, saved: str) -> bool:
    return saved == module or saved.endswith("." + module)


def rows_of(adapter: Adapter, module: str) -> Optional[int]:
    """Rows of a full weight the adapter saved for `module` (modules_to_save, saved embedding layers),
    or the vocabulary a LoRA embedding adapter was trained for; None when absent."""
    for key, name in sorted(adapter.tensors.items()):
        shape = adapter.shape_of(key)
        if name.family in ("other", "copy", "whole") and name.param == "weight" and len(shape) == 2 \
                and _within(module, name.module):
            return shape[0]
    for key, name in sorted(adapter.tensors.items()):
        shape = adapter.shape_of(key)
        if name.role == "lora_embedding_A" and len(shape) == 2 and _within(module, name.module):
            return shape[1]
    return None


def mentions(adapter: Adapter, module: str) -> bool:
    """Whether any saved weight belongs to `module` (a dotted module path of the base)."""
    return any(_within(module, name.module) or f".{module}." in f".{name.module}."
               for name in adapter.tensors.values())


def read_adapter(target: str) -> Adapter:
    """The adapter at `target`, or UnusableInput with one line when it is not a usable PEFT adapter."""
    adapter = open_adapter(target)
    if adapter.kind != "peft-adapter":
        raise UnusableInput(f"{target}: not a PEFT adapter ({adapter.kind}); run `peftdoctor check {target}`")
    require_safe(adapter.directory, adapter.display)
    if adapter.config is None:
        raise UnusableInput(f"{target}: {CONFIG_NAME} {adapter.config_error or 'cannot be read'}")
    if SAFETENSORS_NAME in adapter.weight_files and adapter.header is None:
        raise UnusableInput(f"{target}: {SAFETENSORS_NAME} is unreadable ({adapter.header_error}); "
                            "run `peftdoctor check`")
    if not adapter.weight_files:
        raise UnusableInput(f"{target}: no {SAFETENSORS_NAME} or {PICKLE_NAME}: there are no weights to verify")
    return adapter


def find_base(adapter: Adapter, base: Optional[str]) -> Base:
    name = base or (adapter.config or {}).get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        raise BaseUnavailable("the adapter names no base_model_name_or_path; pass --base PATH_OR_REPO_ID")
    try:
        # resolve() reads the hub cache with local_files_only=True: verify never downloads.
        resolve(name)
    except UnusableInput as exc:
        raise BaseUnavailable(str(exc)) from None
    return open_base(name)  # a base that breaks the file rules or has no config.json is unusable input
