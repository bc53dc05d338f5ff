"""TGI: not on the package registry, so no wheel to read; every row is hand-cited from its git tags.

Its rows stay as a person read them (static/tgi.json) until its source at each tag can be read here; the
generator only reproduces them, so the table has one maker like the others.
"""
from __future__ import annotations

from spec import EngineSpec, static

FACTS: dict = {}
SLOTS = tuple(static("tgi", row_id) for row_id in (
    "tgi-no-lora",
    "tgi-not-lora",
    "tgi-rslora-ok",
    "tgi-dora-ignored",
    "tgi-modules-to-save-ignored",
    "tgi-lora-bias-ignored",
    "tgi-bias-ignored",
    "tgi-rank-pattern-ignored",
    "tgi-embedding-ignored",
    "tgi-lm-head-ignored",
    "tgi-trainable-tokens-ignored",
    "tgi-base-mutating-init-ignored",
    "tgi-keys-outside-layers",
    "tgi-some-keys-outside-layers",
    "tgi-modules-unsupported-a",
    "tgi-modules-unsupported-b",
    "tgi-modules-unsupported-c",
))
RELEASES = ("2.0.4", "2.1.0", "2.2.0", "2.3.0", "2.4.0", "3.0.0", "3.0.1", "3.0.2", "3.1.0", "3.3.0", "3.3.7")
SPEC = EngineSpec(
    "tgi", "TGI", "huggingface/text-generation-inference", "v{version}",
    'Read from the git tags of text-generation-inference. Ranks are padded for its kernels and never refused.'
    " Not generated from source: TGI publishes no wheel, so these rows are hand-cited from its git tags"
    " (scripts/engines/static/tgi.json) and scripts/generate_engines.py only reproduces them.",
    RELEASES, SLOTS, source_kind="git tag")
