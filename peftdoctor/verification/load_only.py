"""`verify --load-only`: what the installed peft really applies, without reading a byte of the base's weights.

The base is built from its config.json on the meta device (base.build_meta_base) and the adapter is attached
with peft's own `PeftModel.from_pretrained`, which reads the adapter file and loads it key by key. Where
peft only warns about what it leaves out ("Found missing adapter keys") and keeps its unexpected keys to
itself, this module records the call peft makes (`set_peft_model_state_dict`, and the `load_state_dict` it
runs on the model) to tell, for every saved tensor, whether it went into a module or nowhere, and for every
adapted module whether it got its weights. Shapes are checked on the meta device as on a real one, so a
size mismatch fails here with peft's own text. The adapter's layers are created on the meta device too
(`low_cpu_mem_usage=True`, peft >= 0.13): the file's tensors are assigned, nothing is initialised.

torch, transformers and peft are imported inside the functions.
"""
from __future__ import annotations

import inspect
import os
import warnings
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput, message_line
from peftdoctor.io.base import find_base_config
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.rules.registry import rule
from peftdoctor.verification import base as basemod
from peftdoctor.verification.facts import BaseUnavailable, find_base, read_adapter
from peftdoctor.verification.result import Computes, LoadOnlyResult, LoadVerdict, Unadapted
from peftdoctor.verification.steps import Run, Skip, load_failure_findings, note_pickled_adapter, one_line

PREFIX = "base_model.model."
ADAPTER_NAME = "default"
# What an adapted module computes when the file gives it no weights: peft's initialisation, per the value of
# the config's init key (init_lora_weights for LoRA, init_ia3_weights for IA3, init_weights for LoHa/LoKr).
# True and "gaussian" zero lora_B (IA3: ones), so the module computes the base; false leaves both random.
INIT_KEYS = ("init_lora_weights", "init_ia3_weights", "init_weights")
COMPUTES_BY_INIT: dict[Any, Computes] = {True: "base", "gaussian": "base", False: "random"}
WRAPPERS = ("ModulesToSaveWrapper", "TrainableTokensWrapper")  # a missing copy keeps the base's module
# Prompt learning: peft loads these into the prompt encoder itself, strictly (it raises when they do not
# fit), after the model's load_state_dict has called them unexpected.
PROMPT_KEYS = frozenset({"prompt_embeddings"})


def load_only(adapter: str, base: Optional[str] = None, trust_remote_code: bool = False) -> LoadOnlyResult:
    """The Python API: load `adapter` with the installed peft onto `base` (else base_model_name_or_path, from
    a directory or the local hub cache: config.json only) built on the meta device. UnusableInput when the
    adapter is not a PEFT adapter or the base's config.json cannot be found."""
    facts = read_adapter(adapter)
    try:
        found = resolve_config(facts, base)
    except BaseUnavailable as exc:
        raise UnusableInput(str(exc)) from None
    model, _ = build(found, facts, trust_remote_code)
    return attach(model, facts)[0]


def verify_load_only(run: Run, facts: Adapter, base_arg: Optional[str], trust_remote_code: bool,
                     state: dict[str, Any]) -> None:
    """The load-only path of `verify`: resolve the base's config, build it on meta, attach the adapter."""
    def resolve() -> tuple[Base, str]:
        try:
            found = resolve_config(facts, base_arg)
        except BaseUnavailable as exc:
            raise Skip(str(exc)) from None
        return found, f"{found.directory or found.display} (config.json only)"

    note_pickled_adapter(run, facts)
    base = run.step("resolve base", "finding the base model's config.json", resolve)
    state.update(base=base.display, device="meta", dtype="none")  # no weight is read, in no dtype
    model = run.step("build base", "building the base on the meta device (no weights read)",
                     lambda: _build_step(run, base, facts, trust_remote_code))
    run.step("load adapter", "loading the adapter with PeftModel.from_pretrained onto the meta base",
             lambda: _attach_step(run, model, facts, state))


def resolve_config(facts: Adapter, base_arg: Optional[str]) -> Base:
    """The base as a directory (local or a cached snapshot), else its config.json alone from the hub cache."""
    try:
        return find_base(facts, base_arg)
    except BaseUnavailable:
        name = base_arg or (facts.config or {}).get("base_model_name_or_path")
        found = find_base_config(name)
        if found is None:
            raise
        return found


def build(base: Base, facts: Adapter, trust_remote_code: bool) -> tuple[Any, Optional[tuple[int, int]]]:
    """The meta base, its embeddings resized to the vocabulary the adapter was saved for (as verify does).
    New rows are not initialised from the old ones' mean (transformers >= 4.46 does by default, reading values
    that the meta device does not have); only the shapes matter here."""
    model = basemod.build_meta_base(base, facts, trust_remote_code)
    rows = basemod.resized_rows(model, facts)
    if rows is not None:
        try:
            model.resize_token_embeddings(rows[1], mean_resizing=False)
        except TypeError:  # transformers < 4.46: no mean_resizing, and no mean taken
            model.resize_token_embeddings(rows[1])
    return model, rows


def _build_step(run: Run, base: Base, facts: Adapter, trust_remote_code: bool) -> tuple[Any, str]:
    with basemod.remote_code_refusal_in_one_line(base, trust_remote_code):
        model, resized = build(base, facts, trust_remote_code)
    if resized:
        run.findings.append(rule("PD309").finding(
            f"the adapter was saved for {resized[1]} vocabulary rows, the base has {resized[0]}: embeddings resized",
            "ship the tokenizer with the added tokens beside the adapter"))
    count = sum(p.numel() for p in model.parameters())
    return model, f"{type(model).__name__} on the meta device, {count:,} parameters declared, none read"


def _attach_step(run: Run, model: Any, facts: Adapter, state: dict[str, Any]) -> tuple[LoadOnlyResult, str]:
    result, exc = attach(model, facts)
    state["load"] = result
    if exc is not None:
        run.findings.extend(load_failure_findings(facts, exc))
        raise exc
    return result, (f"peft {result.peft}: {len(result.applied)} of {len(result.applied) + len(result.unexpected)} "
                    f"saved tensors applied, {len(result.unadapted)} adapted module(s) without weights")


def attach(model: Any, facts: Adapter) -> tuple[LoadOnlyResult, Optional[Exception]]:
    """PeftModel.from_pretrained(model, adapter) with the installed peft, observed; the exception when it raised."""
    import peft
    import transformers
    from peft import PeftModel

    versions = {"peft": peft.__version__, "transformers": transformers.__version__, "base_class": type(model).__name__}
    kwargs: dict[str, Any] = {"is_trainable": False}
    if "low_cpu_mem_usage" in inspect.signature(PeftModel.from_pretrained).parameters:
        kwargs["low_cpu_mem_usage"] = True
    recorder = _Recorder()
    with recorder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(model, str(facts.directory), **kwargs)
        except Exception as exc:  # the user's adapter failing is the result
            said = _peft_warnings(caught)
            return LoadOnlyResult("fails", error=one_line(exc), warnings=said, **versions), exc
    said = _peft_warnings(caught)
    if recorder.result is None:
        raise RuntimeError(f"peft {peft.__version__} loaded the adapter without set_peft_model_state_dict: "
                           "load-only cannot observe this release")
    config = peft_model.peft_config[ADAPTER_NAME]
    applied, unexpected = recorder.outcome(PROMPT_KEYS if getattr(config, "is_prompt_learning", False) else ())
    copies = recorder.copies(unexpected, applied)
    unexpected = tuple(name for name in unexpected if name not in copies)
    params = _adapter_params(peft_model)
    missing = sorted(set(recorder.result.missing_keys) & {k for keys in params.values() for k in keys})
    init = _init_value(config)
    found = (_unadapted(m, keys, set(missing), True if _is_saved_copy(keys) else init) for m, keys in params.items())
    unadapted = tuple(sorted((u for u in found if u is not None), key=lambda u: u.module))
    done = {u.module for u in unadapted}
    return LoadOnlyResult(_verdict(applied, unexpected, unadapted), applied=applied, unexpected=unexpected,
                          copies=tuple(sorted(copies)), missing=tuple(missing), unadapted=unadapted,
                          adapted_modules=tuple(sorted(m for m in params if m not in done)),
                          warnings=said, **versions), None


class _Recorder:
    """While active, records the state dict peft read from the file, the one it hands to the model's
    load_state_dict after its renames (same tensor objects, new names), and what load_state_dict returned."""

    def __init__(self) -> None:
        self.file: dict[str, Any] = {}
        self.loaded: dict[str, Any] = {}
        self.result: Any = None

    def __enter__(self) -> "_Recorder":
        import peft.peft_model

        self._module = peft.peft_model
        self._original = original = peft.peft_model.set_peft_model_state_dict

        def observed(model: Any, state_dict: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.file = dict(state_dict)
            model.load_state_dict = self._observe(model.load_state_dict)
            try:
                return original(model, state_dict, *args, **kwargs)
            finally:
                del model.load_state_dict

        self._module.set_peft_model_state_dict = observed
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._module.set_peft_model_state_dict = self._original

    def _observe(self, load: Callable[..., Any]) -> Callable[..., Any]:
        def observed(state_dict: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.loaded = dict(state_dict)
            self.result = load(state_dict, *args, **kwargs)
            return self.result
        return observed

    def outcome(self, loaded_elsewhere: Any = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(applied, unexpected) saved tensor names. A tensor keeps its object through peft's renames, so its
        file name is found by identity. Tensors peft made anew from several saved ones (transformers 5's
        fused-expert conversions) cannot be traced back one by one: the saved tensors they were made from
        count as applied when every new one loaded, else as going nowhere (a mixed outcome is not split)."""
        names = {id(tensor): key for key, tensor in self.file.items()}
        rejected = set(self.result.unexpected_keys) - set(loaded_elsewhere)
        applied: set[str] = set()
        unexpected: set[str] = set()
        new_lost = False
        for key, tensor in self.loaded.items():
            if id(tensor) in names:
                (unexpected if key in rejected else applied).add(names[id(tensor)])
            else:
                new_lost = new_lost or key in rejected
        consumed = set(self.file) - applied - unexpected
        (unexpected if new_lost else applied).update(consumed)
        return tuple(sorted(applied)), tuple(sorted(unexpected))

    def copies(self, unexpected: tuple[str, ...], applied: tuple[str, ...]) -> set[str]:
        """The unexpected tensors that hold exactly the values of a tensor peft applied: nothing is lost with
        them (peft 0.21 saves a resized embedding kept in modules_to_save under both `X.weight` and
        `X.modules_to_save.weight`, and loads only the first). Compared by value, a cheap fingerprint first."""
        def fingerprint(tensor: Any) -> tuple[Any, ...]:
            return tuple(tensor.shape), tensor.dtype, float(tensor.double().sum()) if tensor.numel() else 0.0

        loaded: dict[tuple[Any, ...], list[Any]] = {}
        for name in applied:
            if name in self.file:
                loaded.setdefault(fingerprint(self.file[name]), []).append(self.file[name])
        if not loaded:
            return set()
        return {name for name in unexpected if name in self.file and any(
            other.equal(self.file[name]) for other in loaded.get(fingerprint(self.file[name]), ()))}


def _adapter_params(peft_model: Any) -> dict[str, list[str]]:
    """{module path without the prefix: the state-dict keys of its adapter parameters} for every adapted
    module and modules_to_save copy (the base layer's own weights excluded)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    params: dict[str, list[str]] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, BaseTunerLayer) and type(module).__name__ not in WRAPPERS:
            continue
        keys = [f"{name}.{p}" for p, _ in module.named_parameters()
                if ADAPTER_NAME in p.split(".") and not p.startswith(("base_layer.", "original_module."))]
        if keys:
            params[_target_name(name, module)] = keys
    return params


def _target_name(name: str, module: Any) -> str:
    """The module path without peft's prefix; for target_parameters (peft's ParamWrapper, nested one per
    parameter of a module) the parameter's own path, e.g. model.layers.0.mlp.experts.gate_up_proj."""
    path = name.removeprefix(PREFIX)
    parameter = getattr(module, "parameter_name", None)
    if not isinstance(parameter, str):
        return path
    return ".".join(part for part in path.split(".") if part != "base_layer") + "." + parameter


def _unadapted(module: str, keys: list[str], missing: set[str], init: Any) -> Optional[Unadapted]:
    lost = [k for k in keys if k in missing]
    if not lost:
        return None
    roles = tuple(sorted({k.split(f".{ADAPTER_NAME}", 1)[0].rsplit(".", 1)[-1] for k in lost}))
    if len(lost) < len(keys):
        return Unadapted(module, "partly loaded", roles)
    return Unadapted(module, _computes(init), roles)


def _is_saved_copy(keys: list[str]) -> bool:
    """Whether these are a modules_to_save / trainable-tokens copy's keys (a copy of the base when not loaded)."""
    return all(".modules_to_save." in k or ".trainable_tokens_" in k for k in keys)


def _init_value(config: Any) -> Any:
    return next((getattr(config, key) for key in INIT_KEYS if hasattr(config, key)), True)


def _computes(init: Any) -> Computes:
    return COMPUTES_BY_INIT.get(init, "initial") if isinstance(init, (bool, str)) else "initial"


def _verdict(applied: tuple[str, ...], unexpected: tuple[str, ...], unadapted: tuple[Unadapted, ...]) -> LoadVerdict:
    if not unexpected and not unadapted:
        return "applies"
    if applied:
        return "partial"
    return "base-only" if all(u.computes == "base" for u in unadapted) else "random"


def _peft_warnings(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """What peft itself warned while loading, one line each (transformers' deprecation notes left out)."""
    mark = f"{os.sep}peft{os.sep}"
    return tuple(message_line(str(w.message), 480) for w in caught if mark in str(w.filename))
