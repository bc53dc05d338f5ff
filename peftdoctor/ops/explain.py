"""`explain`: map an error text or traceback from loading or merging to a finding code and a fix.

The table is data: a pattern for the text each library really prints (tests/test_explain.py
produces every one it can with real code), the finding code it means, and the message and fix
to give, filled from the pattern's named groups.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from peftdoctor.model.findings import Finding
from peftdoctor.peft import releases
from peftdoctor.rules.registry import rule

# Every pattern runs on logs up to EXPLAIN_MAX_BYTES from strangers, so each must stay linear in
# the text's length: no unbounded run may follow a part that can start at many places, or a
# search restarted at each place rescans the same stretch (a 1 MB line took minutes).
_NAME = r"[^\s:]{0,256}?"  # a parameter name: one token, bounded; a ':' ends it in torch's messages

_NOT_CLOSING = r"[^\]]"  # inside a printed list, which may wrap over lines
# Where PD204's scan stops: the next opening, except the "Error while" that follows "SafetensorError: ".
_SAFETENSORS_OPENING = "SafetensorError|(?<!SafetensorError: )Error while"


def _upto(stop: str, char: str = r"[^\n]", least: int = 0, most: int = 4096) -> str:
    """A lazy run of `char` that never crosses `stop` (a regex, normally the pattern's own opening
    text): the runs scanned from successive openings are disjoint, so the search stays linear."""
    return rf"(?:(?!{stop}){char}){{{least},{most}}}?"


@dataclass(frozen=True)
class Pattern:
    code: str
    regex: re.Pattern[str]
    message: str
    fix: str
    accept: Optional[Callable[[re.Match[str], str], bool]] = None  # a second look the regex cannot take


def _p(code: str, regex: str, message: str, fix: str,
       accept: Optional[Callable[[re.Match[str], str], bool]] = None) -> Pattern:
    return Pattern(code, re.compile(regex, re.MULTILINE), message, fix, accept)


def _rank_dim_differs(match: re.Match[str], _text: str) -> bool:
    """lora_A / lora_embedding_A carry the rank first, lora_B / lora_embedding_B last; a mismatch
    elsewhere (the vocabulary of an embedding adapter) is not a rank problem."""
    saved = [d.strip() for d in match["saved"].split(",")]
    current = [d.strip() for d in match["current"].split(",")]
    index = 0 if re.search(r"lora_(?:embedding_)?A", match["param"]) else -1
    return len(saved) == len(current) and saved[index] != current[index]


def _about_peft(match: re.Match[str], text: str) -> bool:
    """A bare KeyError is about peft_type when the value is one some release knows, or the
    traceback passes through peft's config mapping."""
    value = match["peft_type"]
    return any(value in r.peft_types for r in releases.all_releases()) or bool(
        re.search(r"PEFT_TYPE_TO_CONFIG_MAPPING|peft[/\\](?:config|mapping)\.py|peft_type", text))


PATTERNS: tuple[Pattern, ...] = (
    _p("PD105", r"\b(?P<cls>\w{1,256})\.__init__\(\) got an unexpected keyword argument '(?P<key>\w{1,256})'",
       "this peft release does not know {key!r}: the adapter was saved by a newer (or much older) peft",
       "run `peftdoctor fix ADAPTER` to rewrite the config for this peft (it refuses if meaning would change), "
       "or install a peft that knows {key}"),
    _p("PD106", rf"Unexpected keyword arguments \[(?P<keys>{_upto('Unexpected keyword', _NOT_CLOSING)})\] for class "
                r"(?P<cls>\w{1,256}), these are ignored",
       "peft dropped {keys} while loading: if any of them bears meaning the adapter now computes something else",
       "run `peftdoctor check ADAPTER` to see which dropped keys change the outputs, then upgrade peft"),
    _p("PD350", rf"Target modules? ?(?P<targets>{_upto('Target module', least=1)}) ?not found in the base model",
       "target_modules {targets} match no module of this base: wrong base, or names from another architecture",
       "load the base the adapter was trained on (base_model_name_or_path), or correct target_modules"),
    _p("PD206", rf"size mismatch for (?P<param>{_NAME}lora_(?:embedding_)?[AB]{_NAME}): copying a param with shape "
                r"torch\.Size\(\[(?P<saved>[^\]]{0,256})\]\) from checkpoint, the shape in current model is "
                r"torch\.Size\(\[(?P<current>[^\]]{0,256})\]\)",
       "{param}: saved shape [{saved}] but the config builds [{current}]: the declared rank does not match the "
       "weights", "run `peftdoctor check ADAPTER` to see the rank the weights hold and set r / rank_pattern to it",
       accept=_rank_dim_differs),
    _p("PD351", rf"size mismatch for (?P<param>{_NAME}(?:embed|lm_head|wte|word_embeddings|shared){_NAME}): copying a "
                r"param with shape torch\.Size\(\[(?P<saved>[^\]]{0,256})\]\) from checkpoint, the shape in current "
                r"model is torch\.Size\(\[(?P<current>[^\]]{0,256})\]\)",
       "{param}: the adapter was saved for a vocabulary of shape [{saved}], the base has [{current}]",
       "call base.resize_token_embeddings(len(tokenizer)) with the adapter's tokenizer before loading the adapter"),
    _p("PD352", r"(?:does not appear to have (?:a file named|any of the following files:?)|Error no file named) "
                rf"{_upto('does not appear|Error no file')}"
                r"(?:pytorch_model\.bin|model\.safetensors)",
       "a model class looked for full-model weights, but this directory holds an adapter (adapter_model.*)",
       "load the base with AutoModel*, then PeftModel.from_pretrained(base, ADAPTER) "
       "(or AutoPeftModelForCausalLM.from_pretrained(ADAPTER))"),
    _p("PD353", r"cannot import name '(?P<name>\w+)' from 'peft'",
       "{name_said}", "{name_fix}"),
    _p("PD103", r"KeyError: '(?P<peft_type>[A-Z][A-Z0-9_]+)'",
       "{peft_type_said}", "{peft_type_fix}", accept=_about_peft),
    _p("PD116", r"Invalid task type: '(?P<task>[^']*)'",
       "task_type {task!r} is not one this peft release knows; loading fails",
       "set task_type to one of peft's TaskType values (CAUSAL_LM, SEQ_CLS, ...) or remove it"),
    _p("PD114", r"OFT has been updated since PEFT 0\.14\.0",
       "an OFT adapter saved before peft 0.14.0: its weights mean something else in newer releases",
       "retrain with peft>=0.14.0, or pin peft<0.14.0 where this adapter is used"),
    _p("PD004", r"Can't find '?adapter_config\.json'? at '(?P<path>[^']*)'",
       "{path} has no adapter_config.json (and it is not in the local hub cache)",
       "point at the directory save_pretrained() wrote, or download the repo first"),
    _p("PD354", r"Merge (?P<kind>\w+) module to (?P<bits>\d+)-bit linear may get different generations due to "
                r"rounding errors",
       "merging into a {bits}-bit quantized base rounds the adapter's update away",
       "merge into the full-precision (or dequantized) base instead: `peftdoctor verify ADAPTER --out DIR`"),
    _p("PD204", rf"(?:Error while deserializing header|SafetensorError){_upto(_SAFETENSORS_OPENING)}"
                r"(?P<why>HeaderTooLarge|HeaderTooSmall|InvalidHeader\w*|MetadataIncompleteBuffer|"
                r"incomplete metadata[^\n]*|header too (?:large|small)[^\n]*|invalid header length[^\n]*)",
       "the safetensors file is damaged or truncated ({why})",
       "re-copy or re-save the weights; `peftdoctor check ADAPTER` says exactly what is wrong"),
    _p("PD355", r"Found missing adapter keys while loading the checkpoint(?::\s{0,8}\[(?P<keys>[^\]]{0,100000}))?",
       "peft found no weights for modules it adapted: they keep their initial values and compute the base "
       "(random outputs with init_lora_weights false); the file's tensors under other names were dropped",
       "run `peftdoctor check ADAPTER --base BASE`: PD223 names the tensors peft dropped (no or a doubled "
       "base_model.model. prefix, another architecture's module paths) and PD207 the modules left without weights"),
    _p("PD356", r"NaNs detected in the merged weights\. The adapter (?P<adapter>\S+) seems to be broken",
       "merging adapter {adapter} produced NaNs: its weights hold NaN/inf or overflow in the merge dtype",
       "merge in float32 (`peftdoctor verify --dtype float32`) and check the adapter's weights for NaN"),
    _p("PD203", r"(?:Weights only load failed|UnpicklingError)",
       "a pickle weights file refused to load safely (weights_only=True): it holds more than tensors",
       "do not load it with weights_only=False unless you trust its source; convert it to safetensors"),
    _p("PD357", r"requires you to execute the (?:configuration|modeling) file in that repo|"
                r"contains custom code which must be executed|trust_remote_code=True",
       "the base model ships its own code, which runs only with trust_remote_code",
       "read that code first, then pass trust_remote_code=True (`peftdoctor verify --trust-remote-code`)"),
    _p("PD358", r"(?:is not a local folder and is not a valid model identifier|couldn't connect to '[^']*' to "
                r"load the files, and couldn't find them in the cached files|"
                r"outgoing traffic has been disabled|LocalEntryNotFoundError|offline mode is enabled)",
       "the base (or adapter) is neither a local directory nor in the local Hugging Face cache",
       "download it once (`hf download REPO_ID`), or pass a local path with --base"),
    _p("PD501", r"All adapters must have the same r value when using combination_type",
       "these adapters have different ranks, which linear/ties/dare combinations cannot add",
       "use combination_type 'cat' or 'svd', or `peftdoctor check A B --combine linear` to see the ranks"),
    _p("PD502", r"Cannot add weighted adapters if they target the same module with modules_to_save",
       "two adapters carry their own trained copy of the same module (modules_to_save): they cannot be averaged",
       "combine only one adapter with modules_to_save, or drop the copies from the others"),
    _p("PD503", r"all adapter configs should follow the same target modules type",
       "one adapter lists target_modules, another uses a regex string: add_weighted_adapter refuses the mix",
       "re-save the adapters with the same kind of target_modules (lists are safest)"),
)

# Names people import from peft that it never had (or spelled otherwise), and what to use instead.
PEFT_NAMES = {
    "LoRAConfig": "LoraConfig", "LORAConfig": "LoraConfig", "LoraModelConfig": "LoraConfig",
    "DoRAConfig": "LoraConfig(use_dora=True)", "DoraConfig": "LoraConfig(use_dora=True)",
    "QLoRAConfig": "LoraConfig plus transformers' BitsAndBytesConfig", "QLoraConfig": "LoraConfig plus "
    "transformers' BitsAndBytesConfig", "AdaLORAConfig": "AdaLoraConfig", "LoHAConfig": "LoHaConfig",
    "LoKRConfig": "LoKrConfig", "VeRAConfig": "VeraConfig", "IA3config": "IA3Config",
    "PrefixConfig": "PrefixTuningConfig", "PromptConfig": "PromptTuningConfig",
    "PTuningConfig": "PromptEncoderConfig", "P_TuningConfig": "PromptEncoderConfig",
    "AdapterConfig": None, "BitFitConfig": None, "HoulsbyConfig": None, "PfeifferConfig": None,
    "prepare_model_for_int8_training": "prepare_model_for_kbit_training",
}


@dataclass(frozen=True)
class Explanation:
    finding: Finding
    matched: str  # the part of the text that was recognised
    alternatives: tuple[Finding, ...] = ()  # other causes the same message can have, most likely first
    source: str = ""  # the catalogued message (and the releases that print it), when it came from there


def _fill(pattern: Pattern, match: re.Match[str]) -> tuple[str, str]:
    groups = {k: (v or "").strip() for k, v in match.groupdict().items()}
    if "name" in groups:
        groups.update(zip(("name_said", "name_fix"), _about_name(groups["name"])))
    if "peft_type" in groups:
        groups.update(zip(("peft_type_said", "peft_type_fix"), _about_peft_type(groups["peft_type"])))
    return pattern.message.format(**groups), pattern.fix.format(**groups)


def _about_name(name: str) -> tuple[str, str]:
    first = next((r.name for r in releases.all_releases() if name in r.info["config_classes"].values()), None)
    if first:
        return f"{name} exists only from peft {first} on", f"install peft>={first}"
    if name in PEFT_NAMES and PEFT_NAMES[name]:
        return f"peft has no {name}", f"use {PEFT_NAMES[name]}"
    if name in PEFT_NAMES:
        return (f"peft has no {name}: that is another library's adapter method (adapter-transformers / "
                "AdapterHub), not peft's", "use the library that defines it, or a peft method such as LoraConfig")
    return f"peft has no {name} (in this release)", "check the spelling against `dir(peft)`, or upgrade peft"


def _about_peft_type(peft_type: str) -> tuple[str, str]:
    first = next((r.name for r in releases.all_releases() if peft_type in r.peft_types), None)
    if first == releases.all_releases()[0].name:
        return (f"peft_type {peft_type} exists in every peft release, yet the mapping lacks it: the peft that "
                "raised this is broken or not the one you think", "check `python -c \"import peft; "
                "print(peft.__version__, peft.__file__)\"` and reinstall peft")
    if first:
        return f"peft_type {peft_type} is unknown to this peft release", f"install peft>={first}"
    return f"peft_type {peft_type} is unknown to every peft release", "correct peft_type in adapter_config.json"


def explain(text: str) -> tuple[Explanation, ...]:
    """Every known failure found in `text`, each once: the codes of PATTERNS in its order, then the
    others. The catalogue's diagnoses (peftdoctor/messages) decide where they know more: they replace
    a pattern's claim (a key's history, a size mismatch read dimension by dimension) or withdraw it
    (another library's class, a broken install)."""
    from peftdoctor.messages.causes import diagnose

    diagnoses = diagnose(text)
    replaced = {code for d in diagnoses for code in d.replaces}
    found: list[Explanation] = []
    for pattern in PATTERNS:
        if pattern.code in replaced:
            continue
        match = pattern.regex.search(text)
        if match is None or (pattern.accept is not None and not pattern.accept(match, text)):
            continue
        message, fix = _fill(pattern, match)
        found.append(Explanation(rule(pattern.code).finding(message, fix), match.group(0)))
    codes = {e.finding.code for e in found}
    for d in diagnoses:
        if d.weak and found:
            continue  # an area's code says less than a pattern that recognised the text
        if d.causes and d.causes[0].code not in codes:
            codes.add(d.causes[0].code)
            first, *rest = (rule(c.code).finding(c.message, c.fix) for c in d.causes)
            found.append(Explanation(first, d.matched, tuple(rest), d.source))
    order = {p.code: i for i, p in enumerate(PATTERNS)}
    return tuple(sorted(found, key=lambda e: order.get(e.finding.code, len(order))))


@dataclass(frozen=True)
class Explained:
    """What `explain` found in one text, and where the text came from ("-" for standard input)."""

    source: str
    explanations: tuple[Explanation, ...]


def explain_source(text: str, source: str = "-", adapter: Optional[str] = None) -> Explained:
    """explain(text); with `adapter` (a directory), each explanation made precise by a check of it."""
    found = explain(text)
    if adapter is not None and found:
        from peftdoctor.messages.adapter import refine
        from peftdoctor.ops.check import check

        found = refine(found, check(adapter), adapter)
    return Explained(source, found)
