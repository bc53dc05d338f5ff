"""Checks on the generated schemas/peft-<version>.json files.

The agreement checks for the installed peft are written independently of
scripts/peft_introspect.py, so a bug there can't hide itself.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
sys.path.insert(0, str(ROOT / "scripts"))

import generate_schemas  # noqa: E402
import peft_envs  # noqa: E402

INSTALLED = importlib.metadata.version("peft")
SIDE_BY_SIDE = ["0.6.2", "0.13.2"]


def load(version: str) -> dict[str, Any]:
    """The committed schema for ``version``."""
    path = SCHEMAS / f"peft-{version}.json"
    assert path.is_file(), f"{path} missing: run scripts/generate_schemas.py {version}"
    return json.loads(path.read_text())


def plain(value: Any) -> Any:
    """A dataclass default as peft's save_pretrained would write it to JSON."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return plain(dataclasses.asdict(value))
    return value


def init_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass fields a config's __init__ accepts."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def config_mapping() -> dict[str, type]:
    """The installed peft's peft_type -> config class mapping, keyed by plain strings."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {plain(k): cls for k, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def committed_versions() -> list[str]:
    """Versions with a committed schema file."""
    return sorted(p.stem.removeprefix("peft-") for p in SCHEMAS.glob("peft-*.json"))


# ------------------------------------------------------------ every file

def test_every_pinned_release_has_a_schema() -> None:
    assert set(peft_envs.read_pins()) <= set(committed_versions())


@pytest.mark.parametrize("version", committed_versions())
def test_schema_is_valid_draft_2020_12(version: str) -> None:
    schema = load(version)
    Draft202012Validator.check_schema(schema)
    assert schema["x-peft"]["version"] == version
    assert schema["properties"]["peft_type"]["enum"] == sorted(schema["$defs"])


@pytest.mark.parametrize(
    "version, mode",
    [("0.3.0", "ignore"), ("0.6.2", "raise"), ("0.13.2", "raise"), ("0.21.2", "warn")],
)
def test_recorded_unknown_key_mode(version: str, mode: str) -> None:
    xpeft = load(version)["x-peft"]
    assert xpeft["unknown_keys"] == mode
    strict = all(d.get("additionalProperties") is False for d in load(version)["$defs"].values())
    assert strict == (mode == "raise")
    assert (xpeft["unknown_key_message"] is None) == (mode == "ignore")


# ------------------------------------------------- the installed release

def test_installed_schema_matches_config_classes() -> None:
    schema = load(INSTALLED)
    mapping = config_mapping()
    assert sorted(schema["$defs"]) == sorted(mapping)
    for peft_type, cls in mapping.items():
        definition = schema["$defs"][peft_type]
        assert definition["title"] == cls.__name__
        fields = init_fields(cls)
        assert sorted(definition["properties"]) == sorted(fields), peft_type
        for name, field in fields.items():
            prop = dict(definition["properties"][name])
            if field.default is not dataclasses.MISSING:
                default = plain(field.default)
            elif field.default_factory is not dataclasses.MISSING:
                default = plain(field.default_factory())
            else:
                assert "default" not in prop
                continue
            assert prop.pop("default") == default, (peft_type, name)
            errors = list(Draft202012Validator(prop).iter_errors(default))
            assert not errors, (peft_type, name, errors)


def saved_config(config: Any, tmp_path: Path) -> dict[str, Any]:
    """What ``config.save_pretrained`` writes as adapter_config.json."""
    config.save_pretrained(str(tmp_path))
    return json.loads((tmp_path / "adapter_config.json").read_text())


def assert_valid(schema: dict[str, Any], document: dict[str, Any]) -> None:
    """Validate and also require every written key to be a declared property."""
    errors = sorted(Draft202012Validator(schema).iter_errors(document), key=str)
    assert not errors, [e.message for e in errors]
    declared = schema["$defs"][document["peft_type"]]["properties"]
    assert set(document) <= set(declared), set(document) - set(declared)


def test_real_lora_config_validates(tmp_path: Path) -> None:
    from peft import LoraConfig

    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM")
    assert_valid(load(INSTALLED), saved_config(config, tmp_path))


def test_default_configs_validate(tmp_path: Path) -> None:
    schema = load(INSTALLED)
    checked = 0
    for peft_type, cls in config_mapping().items():
        try:
            config = cls()
        except Exception:  # some configs need arguments (e.g. a tokenizer name)
            continue
        out = tmp_path / peft_type
        out.mkdir()
        assert_valid(schema, saved_config(config, out))
        checked += 1
    assert checked >= len(schema["$defs"]) // 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    r=st.integers(min_value=1, max_value=256),
    alpha=st.integers(min_value=1, max_value=512),
    dropout=st.floats(min_value=0.0, max_value=0.9),
    targets=st.lists(st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True), min_size=1, max_size=4),
    dora=st.booleans(),
    bias=st.sampled_from(["none", "all", "lora_only"]),
)
def test_generated_lora_configs_validate(tmp_path_factory: pytest.TempPathFactory, r: int,
                                         alpha: int, dropout: float, targets: list[str],
                                         dora: bool, bias: str) -> None:
    from peft import LoraConfig

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        use_dora=dora, bias=bias)
    assert_valid(load(INSTALLED), saved_config(config, tmp_path_factory.mktemp("lora")))


def test_installed_unknown_key_mode_measured_live(tmp_path: Path) -> None:
    from peft import PeftConfig

    xpeft = load(INSTALLED)["x-peft"]
    key = "surely_not_a_peft_field"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", key: 1}))
    cls = config_mapping()["LORA"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = cls.from_pretrained(str(tmp_path))
        except TypeError as exc:
            mode, message, config = "raise", f"TypeError: {exc}", None
        else:
            hits = [f"{w.category.__name__}: {w.message}" for w in caught if key in str(w.message)]
            mode, message = ("warn", hits[0]) if hits else ("ignore", None)
    assert mode == xpeft["unknown_keys"]
    assert not hasattr(config, key)
    expected = xpeft["unknown_key_message"]
    assert message == (expected and expected.format(config_class=cls.__name__, key=key))
    assert PeftConfig._get_peft_type(str(tmp_path)) == "LORA"


# ------------------------------------------------------ reproducibility

@pytest.mark.parametrize("version", sorted({INSTALLED, *SIDE_BY_SIDE}))
def test_regeneration_reproduces_committed_bytes(version: str) -> None:
    peft_envs.ensure_env(version)  # CI pre-installs these; this is a no-op then
    committed = (SCHEMAS / f"peft-{version}.json").read_text()
    assert generate_schemas.schema_text(version) == committed


# ------------------------------------------------- placeholder literals

@pytest.mark.parametrize("value, ok", [
    ("pissa_niter_16", True),   # peft parses the int after the prefix
    ("pissa", True),
    ("pissa_niter_", False),
    ("pissa_niter_x", False),
    ("pissa_niter_[number of iters]", False),  # the annotation's placeholder is no real value
])
def test_placeholder_literal_is_a_pattern(value: str, ok: bool) -> None:
    """``Literal["pissa_niter_[number of iters]"]`` (peft >= 0.11) denotes a family of strings."""
    validator = Draft202012Validator(load("0.21.2"))
    errors = list(validator.iter_errors({"peft_type": "LORA", "init_lora_weights": value}))
    assert not errors if ok else errors, [e.message for e in errors]
