"""Which files of a model or adapter directory are its tokenizer, for merge (copies them) and verify
(loads them): one list, so that both take the same directory's tokenizer.

A directory ships a tokenizer when it holds a file a tokenizer loads from (tokenizer.json, a
tokenizer_config.json, a sentencepiece model, a vocabulary); special_tokens_map.json or
added_tokens.json alone are not one. The adapter's tokenizer is preferred over the base's: it holds
the tokens added in training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

# Files that define a tokenizer on their own (what AutoTokenizer.from_pretrained can start from).
DEFINING = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json",
            "spiece.model", "sentencepiece.bpe.model")
# Every file a tokenizer's save_pretrained writes (or reads beside the defining ones).
PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
            "spiece.model", "sentencepiece*.model", "chat_template.*")


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in DEFINING)


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer's files in `directory`, sorted (none when it ships no tokenizer)."""
    if not has_tokenizer(directory):
        return []
    return sorted({p for pattern in PATTERNS for p in directory.glob(pattern) if p.is_file()})


def tokenizer_source(directories: Iterable[Path]) -> Path | None:
    """The first of `directories` (adapter first, then base) that ships a tokenizer."""
    return next((d for d in directories if has_tokenizer(d)), None)
