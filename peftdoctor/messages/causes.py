"""Decide the cause of a recognised message from what it names and what peftdoctor knows.

diagnose(text) finds two kinds of messages: those of the generated catalogue (catalogue.py: peft,
transformers, bitsandbytes, safetensors, vllm and sglang releases) and the few whose wording is not
in those releases (CPython's TypeError and ImportError, torch's load_state_dict, huggingface_hub's
repo-id check, pickle). For each it reads the names and numbers in the text (a key, a tensor name and
its shapes, an engine's limit) against the schemas and engine tables, and the rest of the text for
the caller, and gives the causes ranked: the first is the finding, the others alternatives.

A Diagnosis with no causes says "this message is recognised and is not an adapter problem"; it
silences the older pattern table's claim (ops/explain.py) for the same text.
"""
from __future__ import annotations

import re
from typing import Iterator, Optional

from packaging.version import InvalidVersion, Version

from peftdoctor.messages import catalogue, knowledge
from peftdoctor.messages.diagnosis import Cause, Diagnosis
from peftdoctor.messages.diagnosis import make as _d
from peftdoctor.messages.diagnosis import regex as _re
from peftdoctor.messages.diagnosis import search as _search
from peftdoctor.messages.diagnosis import windows as _windows
from peftdoctor.messages.runtime import release_in, runtime_wordings
from peftdoctor.messages.wordings import catalogue_hits, other_wordings
from peftdoctor.peft import tensor_names
from peftdoctor.rules.values import ZERO3_FIX

SIZE_MISMATCH_MAX = 400  # lines of one size-mismatch report read: enough to classify, bounded
__all__ = ["Cause", "Diagnosis", "diagnose"]


# --------------------------------------------------------------------------- unknown keyword arguments

# `_init_` and `init`: Markdown renderings of __init__; the closing quote is lost where a title is cut.
_KWARG = _re(r"(?:(?P<cls>[A-Za-z_][\w.]{0,100})\.)?(?:__init__|_init_|init)\(\) got an unexpected keyword argument "
             r"['\"](?P<key>\w{1,100})['\"]?")
_PEFT_CONTEXT = ("peft/", "peft\\", "peftconfig", "loraconfig", "adapter_config", "peftmodel")


def unexpected_keyword(text: str, lowered: str) -> Iterator[Diagnosis]:
    match = _search(_KWARG, text, lowered, "got an unexpected keyword argument")
    if match is None:
        return
    cls = (match["cls"] or "").rsplit(".", 1)[-1]
    key = match["key"]
    classes = knowledge.config_classes()
    peft_type = classes.get(cls)
    story = knowledge.key_story(key, peft_type)
    if cls and cls not in classes and cls not in knowledge.PEFT_BASES:
        yield _d(match[0], replaces=("PD105",))  # another library's class (SFTTrainer, ...): not an adapter
        return
    if not cls and not (story.known or story.model_config or any(c in lowered for c in _PEFT_CONTEXT)):
        yield _d(match[0], replaces=("PD105",))
        return
    yield _d(match[0], *_key_causes(story, cls or "the config class", knowledge.callers(lowered),
                                    release_in(text, "peft")), replaces=("PD105",))


def _key_causes(story: knowledge.KeyStory, cls: str, callers: list[str], peft: Optional[str] = None) -> list[Cause]:
    """Ranked causes of `cls` refusing the key: what the schemas say first, then a caller passing it. `peft`:
    the release the text names (a path, a version line), which `fix` then rewrites for."""
    key = repr(story.key)
    target = f" --peft {peft}" if peft else ""
    noop = (f"`peftdoctor fix ADAPTER{target}` drops {story.key} when its value is a no-op "
            "(`peftdoctor explain --adapter ADAPTER` says whether it is)")
    who = callers[0] if callers else None
    passed = []
    if story.hub or story.loader:
        what = "a Hub download argument" if story.hub else "a model-loading option"
        passed = [Cause("PD105", f"{key} is {what}, not a config key: {who or 'the calling code'} passed it to "
                        f"from_pretrained and this peft forwarded it into {cls}",
                        f"stop passing {story.key} to PeftModel/PeftConfig.from_pretrained (give it to the base "
                        f"model's loader only): update {who or 'the calling code'}, or use the peft release it was "
                        "written for")]
    if story.legacy:
        return [Cause("PD105", f"this peft release does not know {key}: it is a legacy key, known to peft "
                      f"{story.first} up to {story.last} only; the adapter was saved by that old peft",
                      f"remove {story.key} from adapter_config.json ({noop}), or load it with peft<={story.last}"),
                *passed]
    if story.known and story.introduced_later:
        if peft and _at_least(peft, story.first):  # the text names a release that knows the key
            return [Cause("PD105", f"the text names peft {peft}, which knows {key} (since {story.first}), yet the "
                          "peft that raised this does not: another, older peft is the one imported",
                          "check `python -c \"import peft; print(peft.__version__, peft.__file__)\"` in the "
                          f"environment that failed, and install peft>={story.first} there"), *passed]
        this = f"peft {peft}" if peft else "this peft release"
        return [Cause("PD105", f"{this} does not know {key}: it was introduced in peft {story.first}; "
                      f"the adapter was saved by peft>={story.first}",
                      f"install peft>={story.first}; or {noop}"), *passed]
    if passed:
        return passed
    if story.model_config:
        return [Cause("PD359", f"{cls} got {key}, a key of a transformers model config.json: the file read as "
                      "adapter_config.json is a model's config, not an adapter's",
                      "save the adapter with PeftModel.save_pretrained() (it writes the real adapter_config.json: "
                      "peft_type, r, target_modules, ...); never copy the model's config.json over it")]
    return [Cause("PD105", f"no peft release knows {key}: it was passed by {who or 'the calling code'} (a typo or "
                  "another API's argument), or written into adapter_config.json by another tool",
                  f"remove {story.key} from the call or from adapter_config.json"
                  + (f"; update {who}" if who else ""))]


def _at_least(release: str, first: object) -> bool:
    try:
        return Version(release) >= Version(str(first))
    except InvalidVersion:
        return False


# --------------------------------------------------------------------------- size mismatches

_SIZE = _re(r"size mismatch for (?P<param>[^\s:]{1,400}):\s{0,8}copying a param with shape\s{0,8}"
            r"(?:torch\.Size\()?\[(?P<saved>[\d,\s]{0,80})\]\)?\s{0,8}from checkpoint(?:,\s{0,8}the shape in current "
            r"model is\s{0,8}(?:torch\.Size\()?\[(?P<current>[\d,\s]{0,80})\])?")
_NAMED = _re(r"size mismatch for (?P<param>[^\s:]{1,400})")
_ZERO3_MERGE = _re(r"The size of tensor a \(0\) must match the size of tensor b")
_VOCAB_NAMES = ("embed", "lm_head", "wte", "word_embeddings", "shared", "embed_out", "output")


def _dims(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    return tuple(int(d) for d in re.findall(r"\d{1,12}", text))


def size_mismatch(text: str, lowered: str) -> Iterator[Diagnosis]:
    kinds: dict[str, tuple[str, tuple[int, ...], Optional[tuple[int, ...]], str]] = {}
    seen: set[tuple[int, int]] = set()
    for window in _windows(text, lowered, "mismatch for ", SIZE_MISMATCH_MAX):
        m = _SIZE.search(window)
        if m is None:  # a title or a cut paste naming only the tensor: an embedding's says enough
            named = _NAMED.search(window)
            if named and _vocab_like(tensor_names.parse(named["param"])):
                kinds.setdefault("vocab?", (named["param"], (), None, named[0]))
            continue
        if (hash(m[0]), len(m[0])) in seen:
            continue
        seen.add((hash(m[0]), len(m[0])))
        saved, current = _dims(m["saved"]), _dims(m["current"])
        kind = _size_kind(m["param"], saved or (), current)
        kinds.setdefault(kind, (m["param"], saved or (), current, m[0]))
    zero3 = _search(_ZERO3_MERGE, text, lowered, "the size of tensor a (0)")
    if zero3:
        kinds.setdefault("zero3", ("", (0,), None, zero3[0]))
    for kind in ("zero3", "vocab", "rank", "rank?", "vocab?", "base"):
        if kind in kinds:
            param, saved, current, matched = kinds[kind]
            yield _d(matched, *_size_causes(kind, param, saved, current, lowered), replaces=("PD206", "PD351"))


def _size_kind(param: str, saved: tuple[int, ...], current: Optional[tuple[int, ...]]) -> str:
    if not saved or 0 in saved:
        return "zero3"
    name = tensor_names.parse(param)
    vocab_like = _vocab_like(name)
    if name.is_lora:
        rank_at = 0 if name.role in tensor_names.A_ROLES else -1
        if current is None or len(current) != len(saved):
            return "rank?"
        if saved[rank_at] != current[rank_at]:
            return "rank"
        if name.role in ("lora_embedding_A", "lora_embedding_B") or vocab_like:
            return "vocab"
        return "base"
    if vocab_like and current is not None and len(current) == len(saved) and saved[1:] == current[1:]:
        return "vocab"
    return "vocab?" if vocab_like and current is None else "base"  # a cut text: the embedding's usual cause first


def _vocab_like(name: tensor_names.TensorName) -> bool:
    return any(v in name.module.lower().rsplit(".", 1)[-1] for v in _VOCAB_NAMES)


def _shape(dims: Optional[tuple[int, ...]]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]" if dims is not None else "[?]"


def _size_causes(kind: str, param: str, saved: tuple[int, ...], current: Optional[tuple[int, ...]],
                 lowered: str) -> list[Cause]:
    name = tensor_names.parse(param)
    said = f"{param}: the checkpoint holds {_shape(saved)}, the model builds {_shape(current)}"
    zero3 = Cause("PD214", f"{param}: the checkpoint holds an empty tensor {_shape(saved)}: the adapter was saved "
                  "under DeepSpeed ZeRO-3 without gathering its sharded parameters", ZERO3_FIX)
    if kind == "zero3":
        return [zero3]
    vocab = Cause("PD351", f"{said}: the adapter was saved for a vocabulary of shape {_shape(saved)}, the base "
                  f"has {_shape(current)}", "call base.resize_token_embeddings(len(tokenizer)) with the adapter's "
                  "tokenizer before loading the adapter (or load the base the adapter was trained on)")
    rank_saved = tensor_names.lora_rank(name, saved)
    rank = Cause("PD206", f"{said}: the weights hold rank {rank_saved}, the LoRA built from the config (or the "
                 "script's rank argument) has another rank", "build the LoRA with r (and rank_pattern) equal to the "
                 "rank the weights hold: take them from the adapter's own adapter_config.json, not from a script "
                 "argument; `peftdoctor check ADAPTER` shows the saved ranks")
    base = Cause("PD361", f"{said}: the adapter's layers have other widths than this base's: it was trained on "
                 "another base (another size or architecture)", "load the base named in adapter_config.json "
                 "(base_model_name_or_path), of the same size the adapter was trained on")
    # Only a cut text ("the shape in current mo...") leaves both readings open.
    return {"vocab": [vocab], "rank": [rank], "rank?": [rank, base], "vocab?": [vocab, base], "base": [base]}[kind]


AREA_TAIL = 1_000_000  # the last characters a whole area's messages (a thousand of them) are looked for in


def _area_hits(text: str, lowered: str) -> Iterator[Diagnosis]:
    """The fallback: codes.AREAS messages, in the text's last AREA_TAIL characters (where a log ends with its
    error), so a long text costs a thousand searches of one megabyte at most."""
    return catalogue_hits(text[-AREA_TAIL:], lowered[-AREA_TAIL:], area=True)


def diagnose(text: str) -> list[Diagnosis]:
    """Every recognised message in `text`, each cause once (the first diagnosis naming it wins)."""
    text = catalogue.prepare(text)
    lowered = text.lower()
    found: list[Diagnosis] = []
    seen: set[str] = set()
    for step in (unexpected_keyword, size_mismatch, other_wordings, runtime_wordings, catalogue_hits, _area_hits):
        if step is _area_hits and any(f.causes for f in found):
            break  # a whole area's code only where no specific wording was recognised (and only then searched)
        for diagnosis in step(text, lowered):
            head = diagnosis.causes[0].code if diagnosis.causes else None
            if head is not None and head in seen:
                continue
            if head is not None:
                seen.add(head)
            found.append(diagnosis)
    return found
