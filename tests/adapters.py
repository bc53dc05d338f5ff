"""Build tiny, real Hugging Face bases and peft adapters for tests, fixtures and benchmarks.

Everything is made locally from configs with seeded random weights (nothing is downloaded):

    base = make_llama_base(tmp / "llama")
    adapter = make_lora_adapter(tmp / "lora", base, r=4, use_rslora=True)

Adapter weights are perturbed with a seeded generator, so LoRA B matrices, IA3 vectors and
the like are never the all-zero/all-one values peft initialises them to.

`write_safetensors_header` writes raw (and deliberately corrupt) safetensors files without
torch; it is the only function here that does not import torch, transformers or peft, and
those imports happen lazily so that importing this module stays cheap.
"""
from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # pragma: no cover - typing only
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

PathLike = Union[str, Path]

SENTENCES: tuple[str, ...] = (
    "the quick brown fox jumps over the lazy dog",
    "a tiny model learns a tiny adapter",
    "peft doctor checks adapter configs and weights",
    "low rank adapters add small matrices to large layers",
    "hello world, this is a test sentence.",
)
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")

# Per model type: the Auto class to load it with, the peft task type, and the
# modules a default LoRA targets.
_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "llama": ("AutoModelForCausalLM", "CAUSAL_LM", ("q_proj", "v_proj")),
    "gpt2": ("AutoModelForCausalLM", "CAUSAL_LM", ("c_attn",)),
    "bert": ("AutoModelForSequenceClassification", "SEQ_CLS", ("query", "value")),
    "gemma": ("AutoModelForCausalLM", "CAUSAL_LM", ("q_proj", "v_proj")),
    "gemma2": ("AutoModelForCausalLM", "CAUSAL_LM", ("q_proj", "v_proj")),
    "bart": ("AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", ("q_proj", "v_proj")),
}


# --------------------------------------------------------------------------- tokenizer


def make_tokenizer(directory: PathLike, *, vocab_size: int = 100) -> Path:
    """Train a small BPE tokenizer on SENTENCES and save it as a PreTrainedTokenizerFast."""
    directory = Path(directory)
    _build_tokenizer(vocab_size).save_pretrained(str(directory))
    return directory


def _build_tokenizer(vocab_size: int) -> "PreTrainedTokenizerFast":
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


# --------------------------------------------------------------------------- bases


def make_llama_base(directory: PathLike, *, seed: int = 0, vocab_size: int = 100) -> Path:
    """A 2-layer Llama-style causal LM (hidden 16) plus its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_base(directory, LlamaForCausalLM, config, tokenizer, seed)


def make_gpt2_base(directory: PathLike, *, seed: int = 0, vocab_size: int = 100) -> Path:
    """A 2-layer GPT-2 (its attention/MLP layers are Conv1D, i.e. fan_in_fan_out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _build_tokenizer(vocab_size)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save_base(directory, GPT2LMHeadModel, config, tokenizer, seed)


def make_gemma_base(directory: PathLike, *, generation: int = 1, seed: int = 0, vocab_size: int = 100) -> Path:
    """A 2-layer Gemma (generation 1) or Gemma2 (2): tied embeddings, and an embedding that scales its
    output by sqrt(hidden_size) through a buffer the checkpoint does not hold (embed_scale)."""
    import transformers

    tokenizer = _build_tokenizer(vocab_size)
    name = "Gemma" if generation == 1 else f"Gemma{generation}"
    config = getattr(transformers, f"{name}Config")(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return _save_base(directory, getattr(transformers, f"{name}ForCausalLM"), config, tokenizer, seed)


def make_bart_base(directory: PathLike, *, seed: int = 0, vocab_size: int = 100) -> Path:
    """A 1+1-layer BART: model.shared, both embed_tokens and lm_head are one tied tensor."""
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = _build_tokenizer(vocab_size)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    return _save_base(directory, BartForConditionalGeneration, config, tokenizer, seed)


def make_bert_classifier_base(
    directory: PathLike, *, seed: int = 0, vocab_size: int = 100, num_labels: int = 2
) -> Path:
    """A 2-layer BERT-style sequence classifier (head module: `classifier`)."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _build_tokenizer(vocab_size)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_base(directory, BertForSequenceClassification, config, tokenizer, seed)


def _save_base(
    directory: PathLike, model_cls: Any, config: Any, tokenizer: Any, seed: int
) -> Path:
    import torch

    _quiet_transformers()
    directory = Path(directory)
    torch.manual_seed(seed)
    model = model_cls(config)
    model.save_pretrained(str(directory))  # safetensors by default
    tokenizer.save_pretrained(str(directory))
    return directory


# --------------------------------------------------------------------------- adapters


def make_lora_adapter(
    directory: PathLike,
    base_dir: PathLike,
    *,
    seed: int = 0,
    base_model_name_or_path: Optional[str] = None,
    **lora_kwargs: Any,
) -> Path:
    """A LoRA adapter for the base in `base_dir`; `lora_kwargs` go to LoraConfig.

    Defaults: r=4, lora_alpha=8, the family's usual target modules, the family's task type,
    and fan_in_fan_out=True for GPT-2.
    """
    from peft import LoraConfig

    model_type = _model_type(base_dir)
    _, task_type, targets = _FAMILIES[model_type]
    options: dict[str, Any] = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": list(targets),
        "task_type": task_type,
        "fan_in_fan_out": model_type == "gpt2",
    }
    options.update(lora_kwargs)
    config = LoraConfig(**options)
    return save_adapter(directory, base_dir, config, seed=seed, base_model_name_or_path=base_model_name_or_path)


def make_rslora_adapter(directory: PathLike, base_dir: PathLike, **kwargs: Any) -> Path:
    """LoRA with use_rslora=True (scaling lora_alpha / sqrt(r))."""
    return make_lora_adapter(directory, base_dir, use_rslora=True, **kwargs)


def make_dora_adapter(directory: PathLike, base_dir: PathLike, **kwargs: Any) -> Path:
    """LoRA with use_dora=True (adds lora_magnitude_vector weights)."""
    return make_lora_adapter(directory, base_dir, use_dora=True, **kwargs)


def make_pattern_lora_adapter(directory: PathLike, base_dir: PathLike, **kwargs: Any) -> Path:
    """LoRA whose rank and alpha differ per module through rank_pattern / alpha_pattern."""
    targets = _FAMILIES[_model_type(base_dir)][2]
    first = targets[0]
    options: dict[str, Any] = {
        "r": 4,
        "lora_alpha": 8,
        "rank_pattern": {first: 2},
        "alpha_pattern": {first: 3},
    }
    options.update(kwargs)
    return make_lora_adapter(directory, base_dir, **options)


def make_modules_to_save_adapter(
    directory: PathLike, base_dir: PathLike, *, modules_to_save: Sequence[str] = ("classifier",), **kwargs: Any
) -> Path:
    """LoRA that also saves full copies of `modules_to_save` (meant for the BERT classifier)."""
    return make_lora_adapter(directory, base_dir, modules_to_save=list(modules_to_save), **kwargs)


def make_added_tokens_adapter(directory: PathLike, base_dir: PathLike, *,
                              added: Sequence[str] = ("<tool>", "</tool>")) -> Path:
    """LoRA on q_proj/v_proj of a Llama base whose vocabulary was grown by `added` tokens in training: the
    resized embed_tokens and lm_head are saved through modules_to_save, the grown tokenizer beside them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.add_tokens(list(added))
    model = load_base(base_dir)
    model.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))
    perturb_trainable(peft_model)
    peft_model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def make_ia3_adapter(
    directory: PathLike,
    base_dir: PathLike,
    *,
    seed: int = 0,
    base_model_name_or_path: Optional[str] = None,
    **ia3_kwargs: Any,
) -> Path:
    """An IA3 adapter (defaults chosen per family: attention + one feed-forward module)."""
    from peft import IA3Config

    model_type = _model_type(base_dir)
    task_type = _FAMILIES[model_type][1]
    defaults: dict[str, dict[str, list[str]]] = {
        "llama": {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        "gpt2": {"target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]},
        "bert": {"target_modules": ["key", "value", "output.dense"], "feedforward_modules": ["output.dense"]},
    }
    options: dict[str, Any] = {"task_type": task_type, **defaults[model_type]}
    if model_type == "gpt2":
        options["fan_in_fan_out"] = True
    options.update(ia3_kwargs)
    return save_adapter(directory, base_dir, IA3Config(**options), seed=seed,
                        base_model_name_or_path=base_model_name_or_path)


def make_loha_adapter(
    directory: PathLike,
    base_dir: PathLike,
    *,
    seed: int = 0,
    base_model_name_or_path: Optional[str] = None,
    **loha_kwargs: Any,
) -> Path:
    """A LoHa adapter (Hadamard product of two low-rank pairs)."""
    from peft import LoHaConfig

    model_type = _model_type(base_dir)
    _, task_type, targets = _FAMILIES[model_type]
    options: dict[str, Any] = {"r": 4, "alpha": 8, "target_modules": list(targets), "task_type": task_type}
    options.update(loha_kwargs)
    return save_adapter(directory, base_dir, LoHaConfig(**options), seed=seed,
                        base_model_name_or_path=base_model_name_or_path)


def _make_prompt_learning(config_class: str, directory: PathLike, base_dir: PathLike, seed: int,
                          base_model_name_or_path: Optional[str], num_virtual_tokens: int, **kwargs: Any) -> Path:
    import peft

    task_type = _FAMILIES[_model_type(base_dir)][1]
    config = getattr(peft, config_class)(task_type=task_type, num_virtual_tokens=num_virtual_tokens, **kwargs)
    return save_adapter(directory, base_dir, config, seed=seed, base_model_name_or_path=base_model_name_or_path)


def make_prompt_tuning_adapter(directory: PathLike, base_dir: PathLike, *, seed: int = 0,
                               base_model_name_or_path: Optional[str] = None, num_virtual_tokens: int = 4,
                               **kwargs: Any) -> Path:
    """Prompt tuning: a (num_virtual_tokens, hidden) embedding table."""
    return _make_prompt_learning("PromptTuningConfig", directory, base_dir, seed, base_model_name_or_path,
                                 num_virtual_tokens, **kwargs)


def make_prefix_tuning_adapter(directory: PathLike, base_dir: PathLike, *, seed: int = 0,
                               base_model_name_or_path: Optional[str] = None, num_virtual_tokens: int = 4,
                               **kwargs: Any) -> Path:
    """Prefix tuning: per-layer key/value prefixes."""
    return _make_prompt_learning("PrefixTuningConfig", directory, base_dir, seed, base_model_name_or_path,
                                 num_virtual_tokens, **kwargs)


def save_adapter(
    directory: PathLike,
    base_dir: PathLike,
    config: "PeftConfig",
    *,
    seed: int = 0,
    base_model_name_or_path: Optional[str] = None,
) -> Path:
    """Wrap the base in `base_dir` with `config`, perturb the adapter weights, save.

    adapter_config.json is rewritten with sorted lists (peft writes sets in hash order) and,
    when given, `base_model_name_or_path` in place of the local base path.
    """
    import torch
    from peft import get_peft_model

    directory = Path(directory)
    torch.manual_seed(seed)
    model = get_peft_model(load_base(base_dir), config)
    perturb_trainable(model, seed=seed)
    model.save_pretrained(str(directory))
    normalise_adapter_config(directory / "adapter_config.json", base_model_name_or_path)
    return directory


def edited_copy(src: PathLike, dst: PathLike, changes: Mapping[str, Any], *, indent: Optional[int] = None,
                sort_keys: bool = False, newline: bool = False) -> Path:
    """A copy of the adapter directory `src` at `dst` whose adapter_config.json has `changes` applied (a
    value of ... removes the key), written in the layout asked for (a test of fix's output may depend on it)."""
    target = Path(shutil.copytree(src, dst))
    config = json.loads((target / "adapter_config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        config.pop(key)
    text = json.dumps(config, indent=indent, sort_keys=sort_keys)
    (target / "adapter_config.json").write_text(text + "\n" if newline else text)
    return target


def renamed_copy(src: PathLike, dst: PathLike, rename: Any) -> Path:
    """A copy of the adapter directory `src` at `dst` whose saved tensors are renamed by `rename(key)` (None
    drops the tensor), the config untouched: the key layouts users' files are found in (prefix lost or doubled,
    another architecture's paths, a VLM's nesting, modules without weights)."""
    from safetensors.torch import load_file, save_file

    target = Path(shutil.copytree(src, dst))
    weights = target / "adapter_model.safetensors"
    tensors = {rename(k): v for k, v in load_file(str(weights)).items()}
    save_file({k: v for k, v in tensors.items() if k is not None}, str(weights), metadata={"format": "pt"})
    return target


def load_base(base_dir: PathLike) -> "PreTrainedModel":
    """Load a base made by one of the make_*_base functions with its Auto class."""
    import transformers

    _quiet_transformers()
    auto_name = _FAMILIES[_model_type(base_dir)][0]
    return getattr(transformers, auto_name).from_pretrained(str(base_dir))


def perturb_trainable(model: Any, *, seed: int = 0, scale: float = 0.05) -> None:
    """Add seeded noise to every trainable parameter (LoRA B starts at zero, IA3 at one)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.add_(noise.to(param.dtype) * scale)


def normalise_adapter_config(config_path: Path, base_model_name_or_path: Optional[str] = None) -> None:
    """Sort set-valued lists and optionally replace base_model_name_or_path, in place."""
    data = json.loads(config_path.read_text())
    for key in ("target_modules", "modules_to_save", "feedforward_modules"):
        if isinstance(data.get(key), list):
            data[key] = sorted(data[key])
    if base_model_name_or_path is not None:
        data["base_model_name_or_path"] = base_model_name_or_path
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _quiet_transformers() -> None:
    """No progress bars or info chatter on stderr while building."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _model_type(base_dir: PathLike) -> str:
    config = json.loads((Path(base_dir) / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(f"{base_dir}: unsupported model_type {model_type!r}")
    return str(model_type)


# --------------------------------------------------------------------------- a whole zoo


def make_zoo(directory: PathLike, *, base_model_name_or_path: Optional[str] = None) -> dict[str, Path]:
    """Every base and adapter kind above, under `directory`; returns name -> path.

    With `base_model_name_or_path` (a hub id), the adapters name it instead of the local base.
    """
    root = Path(directory)
    hub = {"base_model_name_or_path": base_model_name_or_path}
    llama = make_llama_base(root / "base-llama")
    gpt2 = make_gpt2_base(root / "base-gpt2")
    bert = make_bert_classifier_base(root / "base-bert")
    made = {"base-llama": llama, "base-gpt2": gpt2, "base-bert": bert}
    builders = {
        "lora-llama": lambda d: make_lora_adapter(d, llama, **hub),
        "lora-gpt2": lambda d: make_lora_adapter(d, gpt2, **hub),
        "rslora-llama": lambda d: make_rslora_adapter(d, llama, **hub),
        "dora-llama": lambda d: make_dora_adapter(d, llama, **hub),
        "pattern-llama": lambda d: make_pattern_lora_adapter(d, llama, **hub),
        "modules-to-save-bert": lambda d: make_modules_to_save_adapter(d, bert, **hub),
        "ia3-llama": lambda d: make_ia3_adapter(d, llama, **hub),
        "loha-llama": lambda d: make_loha_adapter(d, llama, **hub),
        "prompt-tuning-llama": lambda d: make_prompt_tuning_adapter(d, llama, **hub),
        "prefix-tuning-llama": lambda d: make_prefix_tuning_adapter(d, llama, **hub),
    }
    for name, build in builders.items():
        made[name] = build(root / name)
    return made


# --------------------------------------------------------------------------- raw safetensors

# Bytes per element for the dtypes safetensors knows; anything else counts as 1 byte so that
# files with bad dtypes can still be written.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

TensorSpec = tuple[str, Sequence[int]]


def write_safetensors_header(
    path: PathLike,
    tensors: Mapping[str, TensorSpec],
    *,
    truncate: Optional[int] = None,
    lie_header_len: Optional[int] = None,
    metadata: Optional[Mapping[str, str]] = None,
    offsets: Optional[Mapping[str, tuple[int, int]]] = None,
    raw_header: Optional[bytes] = None,
    max_data: int = 1 << 20,
) -> Path:
    """Write a safetensors file for `tensors` (name -> (dtype, shape)) with zeroed data.

    Corruptions, all optional:
      truncate        keep only the first N bytes of the file;
      lie_header_len  write this number as the header length instead of the real one;
      offsets         per-tensor data_offsets to write instead of the computed ones;
      raw_header      write these bytes as the header instead of JSON;
      max_data        write at most this many data bytes (huge shapes make a short file).
    Negative or bogus shapes/dtypes are written as given (their data counts as 0 bytes).
    """
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    position = 0
    for name, (dtype, shape) in tensors.items():
        size = max(0, math.prod(shape)) * DTYPE_SIZES.get(dtype, 1)
        start_end = (position, position + size)
        if offsets is not None and name in offsets:
            start_end = offsets[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": list(start_end)}
        position += size
    header_bytes = raw_header if raw_header is not None else json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8 bytes
    declared = len(header_bytes) if lie_header_len is None else lie_header_len
    blob = struct.pack("<Q", declared) + header_bytes + bytes(min(position, max_data))
    if truncate is not None:
        blob = blob[:truncate]
    path = Path(path)
    path.write_bytes(blob)
    return path
