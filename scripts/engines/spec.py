"""How a table row is made from facts: the shapes shared by every engine's spec (vllm.py, sglang.py, tgi.py).

A ``Rows`` names a feature and the facts that decide it; over the checked releases, consecutive releases
whose decisive facts have the same values form one run, and the run becomes the ``Row`` whose key pattern
(fnmatch over the values joined by "|") matches first. Message, fix and citation are templates filled with
the facts' extracted texts ({fact}) and the run ({run}: a, b, c... per template). A row the source cannot
decide (an architecture's module list read by a person) is a ``Static`` row: kept as written, with its
citation, and said so in the table's note.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union


@dataclass(frozen=True)
class Row:
    id: str  # may hold {run}
    behaviour: str
    message: str
    fix: str
    cite: str = "{where}"  # the source part after "<repo>@v<first release>: "; {where} is the decisive hits
    feature: Optional[str] = None  # when the row's feature is not the Rows' one (modules_to_save_non_head)
    rewrite: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)  # constants
    params_from: dict[str, str] = field(default_factory=dict)  # param name -> fact whose value it is
    cite_facts: tuple[str, ...] = ()  # facts cited besides the Rows' first one


@dataclass(frozen=True)
class Rows:
    feature: str
    facts: tuple[str, ...]
    by: tuple[tuple[str, Optional[Row]], ...]  # (key pattern, row or None for no row), first match wins
    gate: Optional[str] = "lora"  # only releases where this fact is true (the engine serves LoRA at all)


@dataclass(frozen=True)
class Static:
    """A hand-cited row (see the module docstring); `entry` is written as given."""
    entry: dict[str, Any]


Slot = Union[Rows, Static]

# Fixes every engine's rows share: what a user can do when no engine flag or config rewrite helps.
MERGE = "merge the adapter into the base and serve the merged model"
MERGE_DORA = "merge the DoRA adapter into the base and serve the merged model, or retrain with use_dora=false"
RESAVE = "re-save with save_pretrained(path_initial_model_for_weight_conversion=...) to get a plain LoRA"


@dataclass(frozen=True)
class EngineSpec:
    engine: str
    name: str
    repo: str  # owner/name of the engine's source, for citations
    tag: str  # how a release's tag is spelled, e.g. "v{version}"
    note: str
    releases: tuple[str, ...]  # the checked releases, oldest first
    slots: tuple[Slot, ...]
    source_kind: str = "wheel"  # what the facts were read from, for citations
    extra: dict[str, str] = field(default_factory=dict)  # table key -> fact listed per release (TGI's peft pins)


STATIC_DIR = Path(__file__).with_name("static")


@lru_cache(maxsize=None)
def _static_rows(engine: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in json.loads((STATIC_DIR / f"{engine}.json").read_text("utf-8"))}


def static(engine: str, row_id: str) -> Static:
    """The hand-cited row `row_id` of `engine` (static/<engine>.json)."""
    return Static(_static_rows(engine)[row_id])
