"""Load the base model the way a deployment would: the Auto class for the adapter's task_type, the
requested dtype and device, trust_remote_code only when asked. torch/transformers are imported
inside the functions so that importing peftdoctor.verification stays cheap.
"""
from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.io.files import copy_inside
from peftdoctor.io.tokenizer import has_tokenizer, tokenizer_files
from peftdoctor.model.adapter import Adapter
from peftdoctor.model.base import Base
from peftdoctor.peft import targeting
from peftdoctor.peft.semantics import AUTO_CLASS_BY_TASK
from peftdoctor.verification import facts as adapter_facts

# Heads that transformers creates fresh when a checkpoint lacks them; the adapter must carry them.
_HEAD_TASKS = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")
_HEAD_NAMES = ("classifier", "score", "qa_outputs", "classifier.out_proj")


@dataclass
class LoadedBase:
    model: Any
    missing: tuple[str, ...]  # parameters transformers initialised at random (not in the checkpoint)


def auto_class_name(task_type: Optional[str]) -> str:
    return AUTO_CLASS_BY_TASK.get(task_type or "", "AutoModel")


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def head_labels(adapter: Adapter) -> Optional[int]:
    """num_labels of a classifier head the adapter saves, so that a base without that head (or with
    another label count) is built with the head the adapter will fill."""
    if adapter.task_type not in _HEAD_TASKS:
        return None
    for name in _HEAD_NAMES:
        rows = adapter_facts.rows_of(adapter, name)
        if rows is not None:
            return rows
    return None


def load_base(base: Base, adapter: Adapter, *, dtype: str, device: str, trust_remote_code: bool,
              quantized: bool, placement: Optional[dict[str, Any]] = None) -> LoadedBase:
    """The base as the adapter expects it. `quantized`: keep a bitsandbytes checkpoint quantized
    (else such a checkpoint is dequantized and cast to `dtype`). `placement`: from_pretrained's
    big-model arguments (device_map, max_memory, offload_folder): accelerate places the weights and
    the model is not moved afterwards."""
    import transformers

    cls = getattr(transformers, auto_class_name(adapter.task_type))
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype(dtype),
                              "output_loading_info": True}
    labels = head_labels(adapter)
    if labels is not None and labels != base.config.get("num_labels", len(base.config.get("id2label") or {}) or 2):
        kwargs.update(num_labels=labels, ignore_mismatched_sizes=True)
    if placement is not None:
        kwargs.update(placement)
    elif base.bnb_quantized:
        # bitsandbytes places weights itself; .to() on a 4-bit model is refused.
        kwargs["device_map"] = {"": device}
    model, info = cls.from_pretrained(str(base.directory), **kwargs)
    # A model dispatched by accelerate is never moved: its hooks bring the weights in at each forward.
    if base.bnb_quantized and not quantized and placement is None:
        model = model.dequantize()
        model = model.to(torch_dtype(dtype))
    elif not base.bnb_quantized and placement is None:
        model = model.to(device)
    model.eval()
    missing = tuple(sorted(set(info.get("missing_keys") or ()) | set(_mismatched(info))))
    return LoadedBase(model, missing)


# Building the module tree costs time per layer even on the meta device (1,000 Llama layers: about 4 s on a
# busy 2-core machine); the deepest published models have about 130. A config declaring more is refused.
MAX_LAYERS = 1_000
_LAYER_KEY = re.compile(r"(^|_)(n_)?layers?$")


def declared_layers(config: dict[str, Any]) -> int:
    """The largest layer count config.json declares (num_hidden_layers, n_layer, encoder_layers, ..., in the
    config or one of its sub-configs such as text_config)."""
    found = [v for c in (config, *(v for v in config.values() if isinstance(v, dict))) for k, v in c.items()
             if _LAYER_KEY.search(k) and isinstance(v, int) and not isinstance(v, bool)]
    return max(found, default=0)


def build_meta_base(base: Base, adapter: Adapter, trust_remote_code: bool) -> Any:
    """The base's architecture from its config.json alone, every parameter and buffer on the meta device:
    no weight is read or allocated, so a base of any size is built in about the time its module tree takes.
    The class and the head are those load_base picks, so that peft meets the same module tree; where that
    Auto class does not take the architecture (a Llava with task_type CAUSAL_LM under transformers 5), the
    class config.json names in `architectures`, as the user's own loading code does."""
    import torch
    import transformers

    layers = declared_layers(base.config)
    if layers > MAX_LAYERS:
        raise UnusableInput(f"{base.display}: config.json declares {layers:,} layers (the deepest real models have "
                            f"about 130; the cap is {MAX_LAYERS:,}): not built")
    if base.directory is not None:
        config = transformers.AutoConfig.from_pretrained(str(base.directory), trust_remote_code=trust_remote_code)
    else:  # only config.json is cached: the known architectures are built from it (remote code needs the files)
        values = dict(base.config)
        config = transformers.AutoConfig.for_model(str(values.pop("model_type", "")), **values)
    labels = head_labels(adapter)
    if labels is not None:
        config.num_labels = labels
    auto = getattr(transformers, auto_class_name(adapter.task_type))
    with torch.device("meta"):
        try:
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            named = _model_class(base.architecture)
            if not str(exc).startswith("Unrecognized configuration class") or named is None:
                raise
            model = named(config)
    model.eval()
    return model


def _model_class(name: Optional[str]) -> Any:
    """transformers' own model class of that name (config.json's `architectures`), or None: a name from a
    stranger's file is looked up among transformers' models only, never imported from elsewhere."""
    import transformers

    try:
        found = getattr(transformers, name or "", None)
    except Exception:  # a lazy attribute whose optional dependency is missing
        return None
    return found if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel) else None


@contextmanager
def remote_code_refusal_in_one_line(base: Base, trust_remote_code: bool) -> Iterator[None]:
    """transformers' refusal to run a base's own code spans lines; the one-line step detail must still say
    what to do."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ValueError(f"{base.display} needs its own Python code to load, which was not run: read it, "
                             "then pass --trust-remote-code") from None
        raise


def _mismatched(info: dict[str, Any]) -> list[str]:
    return [entry[0] if isinstance(entry, (tuple, list)) else str(entry) for entry in info.get("mismatched_keys") or ()]


def untrained_head(missing: tuple[str, ...], adapter: Adapter) -> list[str]:
    """Parameters initialised at random that the adapter does not replace: different on every load."""
    saved = adapter.config.get("modules_to_save")
    return [key for key in missing
            if not targeting.saved_by(key, saved) and not adapter_facts.mentions(adapter, key.rsplit(".", 1)[0])]


def module_name(model: Any, module: Any) -> Optional[str]:
    """The dotted name of `module` inside `model` (e.g. "model.embed_tokens")."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return None


def resized_rows(model: Any, adapter: Adapter) -> Optional[tuple[int, int]]:
    """(base rows, adapter rows) when the adapter was saved for another vocabulary size than the
    base's token embeddings (tokens added in training), else None."""
    embeddings = model.get_input_embeddings()
    if embeddings is None:
        return None
    old = int(embeddings.weight.shape[0])
    names = [module_name(model, embeddings)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        names.append(module_name(model, head))
    wanted = next((r for r in (adapter_facts.rows_of(adapter, n) for n in names if n) if r is not None and r != old), None)
    return None if wanted is None else (old, wanted)


def resize_for_adapter(model: Any, adapter: Adapter) -> Optional[tuple[int, int]]:
    """Resize the base's token embeddings to the vocabulary the adapter was saved with, as the
    training script did after adding tokens; returns (old, new) rows when it did."""
    rows = resized_rows(model, adapter)
    if rows is not None:
        model.resize_token_embeddings(rows[1])
    return rows


def load_tokenizer(adapter: Adapter, base: Base, trust_remote_code: bool) -> tuple[Any, Optional[str]]:
    """The adapter's own tokenizer when it ships one (it holds tokens added in training), else the
    base's; (None, None) when neither loads. Loaded from a private copy of its files made under the file
    rules (io.files.copy_inside) at this moment: transformers would follow a link planted since the start
    (vocab.txt -> a secret) and save what it read into --out. A refused file raises FileRefused."""
    from transformers import AutoTokenizer

    sources = ([adapter.directory] if has_tokenizer(adapter.directory) else []) + [base.directory]
    for source in sources:
        with tempfile.TemporaryDirectory(prefix="peftdoctor-tokenizer-") as private:
            # config.json too: without a tokenizer_class, AutoTokenizer picks the class by its model_type;
            # and a tokenizer's own code, which runs only with --trust-remote-code.
            config = [source / "config.json"] if (source / "config.json").is_file() else []
            code = sorted(source.glob("*.py")) if trust_remote_code else []
            for path in [*tokenizer_files(source), *config, *code]:
                copy_inside(path, Path(private) / path.name)
            try:
                return AutoTokenizer.from_pretrained(private, trust_remote_code=trust_remote_code), str(source)
            except (OSError, ValueError, TypeError, KeyError):
                continue
    return None, None
