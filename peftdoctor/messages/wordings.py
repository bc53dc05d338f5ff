"""Messages whose cause a name or number in them decides, and the catalogue's messages.

Two kinds: wordings that are not in the catalogued releases (huggingface_hub's repo-id check, pickle's
load key, other tools' merge refusals, attribute errors on PeftModel) and the catalogued messages a
code is mapped to (codes.py), each read by a decider: the tensor name an engine refused, the rank and
limit it printed, the releases that print it.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator

from peftdoctor.messages import catalogue, knowledge
from peftdoctor.messages.catalogue import Hit
from peftdoctor.messages.diagnosis import Cause, Diagnosis
from peftdoctor.messages.diagnosis import make as _d
from peftdoctor.messages.diagnosis import regex as _re
from peftdoctor.messages.diagnosis import search as _search
from peftdoctor.peft import tensor_names
from peftdoctor.rules.values import ZERO3_FIX
from peftdoctor.rules.weights import LFS_FIX

# --------------------------------------------------------------------------- other wordings outside the catalogue

_IMPORT = _re(r"cannot import name '(?P<name>\w{1,100})' from 'peft' \(unknown location\)")
# torch.load of a pointer: pickle's "invalid load key, 'v'", or under weights_only (the default from torch 2.6)
# the same first byte, "v" = 118, as an unsupported opcode
_LFS = _re(r"invalid load key, 'v'|Unsupported operand 118\b|version https://git-lfs\.github\.com/spec")
_REPO_ID = _re(r"Repo id must be in the form 'repo_name' or 'namespace/repo_name': '(?P<repo>[^'\n]{1,400})'")
_NOT_FOUND = _re(r"404 Client Error[^\n]{0,200}?huggingface\.co/(?P<repo>[^\s]{1,300}?)/resolve/[^\s/]{1,100}/"
                 r"adapter_config\.json")
_MERGE_ATTR = _re(r"'(?P<cls>\w{1,100})' object has no attribute '(?P<method>\w{1,60})'")
# ms-swift's refusal, older ("NAME is a quantized model ...") and newer ("quant_method: bnb, quantized model ...").
_QUANT_MERGE = _re(r"(?P<what>[^\s]{1,200})(?: is a|,) quantized model and does not support merge")
_NO_CONFIG = _re(r"Can't find '?adapter_config\.json'?(?! at)")
_NO_MODEL_CONFIG = _re(r"(?P<repo>[^\s'\"]{1,300}) does not appear to have a file named config\.json")
_UNRECOGNIZED = _re(r"Unrecognized model in (?P<path>[^\n]{0,300}?)\.? Should have a .?model_type.? key")
_MAGNITUDE = _re(r"(?:no match|unsupported|not supported)[^\n]{0,40}?(?P<name>[\w.]{0,300}lora_magnitude_vector)"
                 r"|(?P<name2>[\w.]{0,300}lora_magnitude_vector)[^\n]{0,20}?(?:unsupported|not supported)")

# Python's re refusing a regex peft built from the config: re.error (PatternError from 3.13) names no key.
_REGEX_REFUSED = _re(r"\b(?:re\.error|re\.PatternError|PatternError|error): (?P<msg>[^\n]{1,200}?) at position \d{1,9}")
_PEFT_MATCHING = ("check_target_module_exists", "get_pattern_key", "_get_pattern_key", "inject_adapter",
                  "target_modules", "rank_pattern", "alpha_pattern", "layers_pattern", "exclude_modules")
_TENSOR_REFUSED = _re(r"\blora (?P<name>base_model\.model\.[\w.]{1,300}) is not supported")


def other_wordings(text: str, lowered: str) -> Iterator[Diagnosis]:
    m = _search(_IMPORT, text, lowered, "(unknown location)")
    if m:  # "(unknown location)": peft itself is a broken install (a namespace package), whatever the name
        yield _d(m[0], replaces=("PD353",))
    m = (_search(_LFS, text, lowered, "invalid load key") or _search(_LFS, text, lowered, "unsupported operand 118")
         or _search(_LFS, text, lowered, "git-lfs"))
    if m:
        yield _d(m[0], _lfs_pointer("the weights file is a Git LFS pointer (a small text file starting with "
                                    "'version https://git-lfs...')"), replaces=("PD203",))
    for m in (_search(_REPO_ID, text, lowered, "repo id must be"),
              _search(_NOT_FOUND, text, lowered, "404 client error")):
        if m:
            yield _path_as_repo(m, lowered)
            break
    m = _search(_MERGE_ATTR, text, lowered, "object has no attribute '")
    if m:
        yield _d(m[0], *_missing_method(m["cls"], m["method"]))
    m = _search(_QUANT_MERGE, text, lowered, "does not support merge")
    if m:
        yield _d(m[0], _quantized("the base is quantized (GPTQ/AWQ)"))
    m = _search(_NO_CONFIG, text, lowered, "adapter_config.json")
    if m:
        yield _d(m[0], _no_adapter_config(lowered))
    m = (_search(_NO_MODEL_CONFIG, text, lowered, "does not appear to have a file named config.json")
         or _search(_UNRECOGNIZED, text, lowered, "unrecognized model in"))
    if m and ("adapter" in lowered or "lora" in lowered or "peft" in lowered):
        yield _d(m[0], Cause("PD352", "a transformers model class (AutoModel*/AutoConfig) was pointed at an adapter "
                             "(it holds adapter_config.json, not a model config.json)",
                             "load the base with AutoModel*, then PeftModel.from_pretrained(base, ADAPTER) "
                             "(or AutoPeftModelForCausalLM.from_pretrained(ADAPTER))"))
    m = _search(_MAGNITUDE, text, lowered, "lora_magnitude_vector")
    if m:
        yield _d(m[0], _dora_cause())
    m = _search(_REGEX_REFUSED, text, lowered, " at position ")
    if m and any(name in lowered for name in _PEFT_MATCHING):
        yield _d(m[0], Cause("PD118", f"a regex peft built from the adapter's config is not one Python's re accepts "
                             f"({m['msg']}): target_modules or exclude_modules (a string), a layers_pattern, or a "
                             "rank_pattern / alpha_pattern key", "run `peftdoctor check ADAPTER`, which names the key; "
                             "escape the regex characters (re.escape) or list plain module names"))
    m = _search(_TENSOR_REFUSED, text, lowered, " is not supported")
    if m:  # other engines' and releases' wording of "this saved tensor cannot be served"
        yield _d(m[0], *_weight_causes(m["name"]))


def _missing_method(cls: str, method: str) -> list[Cause]:
    """A PeftModel method missing: the peft release predates it (when PeftModel itself lacks it), or
    PeftModel handed the call to the base model (a prompt-learning adapter has nothing to merge)."""
    since = knowledge.peft_api_since(method)
    if since is None:
        return []
    old = Cause("PD366", f"{cls} has no {method}: this peft release predates it (first defined in peft {since})",
                f"install peft>={since}")
    ours = cls.startswith("Peft") or cls in knowledge.tuner_models()  # PeftModel* or a tuner (LoraModel, ...)
    if method not in ("merge_and_unload", "merge_adapter", "unload"):
        return [old] if ours else []
    prompt = Cause("PD308", f"{cls} has no {method}: the adapter is a prompt-learning one (prompt/prefix tuning, "
                   "p-tuning), which has no weights to merge, so PeftModel hands the call to the base model",
                   "deploy it unmerged with PeftModel.from_pretrained(base, ADAPTER); only LoRA-like adapters can be "
                   "merged (if it is a LoRA, the model was never wrapped by PeftModel)")
    return [old, prompt] if ours else [prompt]


def _path_as_repo(m: re.Match[str], lowered: str) -> Diagnosis:
    repo = m["repo"]
    how = "it is not a valid repo id" if "repo id must" in m[0].lower() else "no Hub repo has that name (404)"
    fix = "pass the adapter's real local path (absolute, or relative to the working directory the script runs in)"
    if "LLaMA-Factory" in knowledge.callers(lowered) or "saves/" in repo:
        fix = ("LLaMA-Factory's web UI joins the checkpoint box under saves/MODEL/lora/: pick a checkpoint that is "
               "there, or put the adapter there, instead of typing an absolute path")
    return _d(m[0], Cause("PD363", f"{repo!r} is not an existing local directory, so it was tried as a Hub repo "
                          f"id, and {how}", fix))


def _quantized(what: str) -> Cause:
    return Cause("PD354", f"{what}: an adapter cannot be merged into quantized weights (refused, or rounded away)",
                 "reload the base in float16/bfloat16 (not quantized), merge there, then quantize the merged model "
                 "if needed: `peftdoctor verify ADAPTER --out DIR` merges into the full-precision base")


def _no_adapter_config(lowered: str) -> Cause:
    checkpoint = "checkpoint" in lowered or "trainer" in lowered
    return Cause("PD004", "the directory (or Hub repo) has no adapter_config.json"
                 + (": a Trainer checkpoint-N folder (or one written by torch.save/trainer) is not one written by "
                    "the PEFT model's save_pretrained()" if checkpoint else ""),
                 "point at the directory PeftModel.save_pretrained() wrote (it holds adapter_config.json and "
                 "adapter_model.*); save the final model with model.save_pretrained(DIR)")


def _dora_cause() -> Cause:
    return Cause("PD403", "the adapter is DoRA (use_dora: lora_magnitude_vector tensors), which this serving "
                 "engine does not support: " + knowledge.engine_advice("vllm", "dora"),
                 "serve the merged model instead (`peftdoctor verify ADAPTER --out DIR`), or retrain without DoRA")


# --------------------------------------------------------------------------- catalogue messages


def _merge_refused(hit: Hit, text: str, lowered: str) -> list[Cause]:
    template = hit.message.template.lower()
    what = ("the base is GPTQ-quantized" if "gptq" in template else
            "the base is loaded in 8-bit or 4-bit (bitsandbytes)" if "bit" in template else "the base is quantized")
    return [_quantized(f"{what}; {hit.message.where()} says so")]


def _rank_limit(hit: Hit, text: str, lowered: str) -> list[Cause]:
    if hit.message.package == "sglang":  # "LoRA adapter NAME with rank R is incompatible with ... memory pool"
        rank = hit.group("r") or "R"
        return [Cause("PD408", f"the adapter's rank {rank} is above the rank the engine's LoRA memory pool was "
                      f"sized for ({hit.message.where()})", f"start sglang with --max-lora-rank {rank} (at least "
                      "the largest rank of the adapters it serves)")]
    rank, limit = _numbers(hit.match[0])
    return [Cause("PD408", f"the adapter's rank {rank} is above the engine's max_lora_rank {limit} "
                  f"({hit.message.where()}): {knowledge.engine_advice('vllm', 'rank_above_default')}",
                  _rank_flag(rank or "R", knowledge.callers(lowered)) + "; "
                  + knowledge.engine_fix("vllm", "rank_above_max", ""))]


# How each wrapper passes vLLM's max_lora_rank on (the argument is in its released wheels).
_RANK_FLAGS = {"LLaMA-Factory": "set vllm_max_lora_rank: {r} in LLaMA-Factory's arguments",
               "unsloth": "pass max_lora_rank={r} to Unsloth's FastLanguageModel.from_pretrained(..., "
                          "fast_inference=True)",
               "ms-swift": "pass --vllm_max_lora_rank {r} to ms-swift"}


def _rank_flag(rank: str, callers: list[str]) -> str:
    flag = next((_RANK_FLAGS[c].format(r=rank) for c in callers if c in _RANK_FLAGS), None)
    engine = f"start the engine with --max-lora-rank {rank} (LLM(..., max_lora_rank={rank}))"
    return f"{flag} (vLLM's --max-lora-rank)" if flag else engine


def _numbers(text: str) -> tuple[str, str]:
    found = re.findall(r"\d{1,9}", text)
    return (found[0] if found else "", found[1] if len(found) > 1 else "")


def _no_lora_architecture(hit: Hit, text: str, lowered: str) -> list[Cause]:
    if "target module" in hit.message.template.lower():
        return _engine_targets(hit)
    model = hit.group("model_cls", "__name__", "model", "architecture", "value") or "this architecture"
    return [Cause("PD416", f"the engine has no LoRA support for {model} in this release ({hit.message.where()}): "
                  "no adapter for this architecture can be served", "serve the merged model "
                  "(`peftdoctor verify ADAPTER --out DIR`), or an engine release that lists the architecture as "
                  "supporting LoRA")]


def _engine_targets(hit: Hit) -> list[Cause]:
    """An engine refusing the adapter's target_modules: sglang for what it was started with, vLLM for the
    modules its implementation of the architecture has LoRA layers for."""
    said = f"{hit.match[0][:240]} ({hit.message.where()})"
    if hit.message.package == "sglang":
        return [Cause("PD416", f"the adapter targets modules the engine was not started for: {said}",
                      "start sglang with --lora-target-modules all (or list every module of the adapters' "
                      "target_modules); target_modules in adapter_config.json must be a list of module names")]
    return [Cause("PD416", f"the adapter targets modules this engine's implementation of the architecture has no "
                  f"LoRA layer for: {said}", "serve the merged model (`peftdoctor verify ADAPTER --out DIR`), or "
                  "retrain targeting only the modules the engine lists")]


def _unsupported_weight(hit: Hit, text: str, lowered: str) -> list[Cause]:
    raw = hit.match[0]
    name = next((w for w in re.findall(r"[\w.]{1,400}", raw) if "." in w and not w.endswith(".")), "")
    if not name:  # "only supports modules_to_save being None": the config, not a tensor, was read
        return [Cause("PD405", f"the adapter has modules_to_save, which this engine release refuses "
                      f"({hit.message.where()}): " + knowledge.engine_advice("vllm", "modules_to_save"),
                      knowledge.engine_fix("vllm", "modules_to_save", "serve the merged model"))]
    return _weight_causes(name)


def _dora(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [_dora_cause()]


def _engine_feature(feature: str) -> Callable[[Hit, str, str], list[Cause]]:
    """An engine refusal the engine table words: its message and fix for `feature`."""
    def decide(hit: Hit, text: str, lowered: str) -> list[Cause]:
        return [Cause(hit.message.code or "PD008", f"{hit.match[0][:200]} ({hit.message.where()}): "
                      + knowledge.engine_advice("vllm", feature), knowledge.engine_fix("vllm", feature,
                                                                                      "serve the merged model"))]
    return decide


def _weight_causes(name: str) -> list[Cause]:
    """Why an engine refuses the saved tensor `name`: read with peft's tensor-name grammar."""
    parsed = tensor_names.parse(name)
    if parsed.role == "lora_magnitude_vector":
        return [_dora_cause()]
    if parsed.role == "token_adapter":
        return [Cause("PD412", f"{name}: the adapter trains tokens (trainable_token_indices), a weight the engine's "
                      "LoRA loader does not know (" + knowledge.engine_advice("vllm", "trainable_tokens") + ")",
                      "serve the merged model, or retrain with the new tokens' rows in modules_to_save")]
    if parsed.role == "base_layer":
        return [Cause("PD365", f"{name}: the adapter saved the whole {parsed.module} layer (its vocabulary was "
                      "resized, so save_embedding_layers stored it), which the engine's LoRA loader cannot serve",
                      "serve the merged model (`peftdoctor verify ADAPTER --out DIR`), or keep the base's "
                      "vocabulary and save with save_embedding_layers=False")]
    if parsed.role in ("other", "modules_to_save"):
        return [Cause("PD405", f"{name}: a full trained copy of {parsed.module} (modules_to_save), which the engine "
                      "does not serve: " + knowledge.engine_advice("vllm", "modules_to_save"),
                      knowledge.engine_fix("vllm", "modules_to_save", "serve the merged model"))]
    if parsed.param == "bias":
        return [Cause("PD406", f"{name}: a LoRA bias, which this engine release does not load",
                      knowledge.engine_fix("vllm", "lora_bias", "retrain without lora_bias, or serve merged"))]
    return [Cause("PD415", f"{name}: a weight the engine's LoRA loader does not know", "serve the merged model")]


def _ignored_modules(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [Cause("PD415", f"the engine applies LoRA only to the language model: {hit.match[0][-200:]}",
                  "serve the merged model if the adapter must change the vision tower, or train LoRA on the language "
                  "model only")]


def _vocab_limit(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [Cause("PD364", f"this engine release serves LoRA only for base vocabularies in a fixed range "
                  f"({hit.message.where()}): {hit.match[0][:200]}", "serve with a newer engine release, or serve "
                  "the merged model")]


def _no_targets(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [Cause("PD360", "target_modules is empty and this peft release has no default target_modules for the "
                  f"model's architecture ({hit.message.where()})", "name the modules: "
                  "LoraConfig(target_modules=[...]) with the base's linear layer names (e.g. query_key_value for "
                  "ChatGLM/Falcon, W_pack for Baichuan), or target_modules='all-linear' on peft that knows it")]


def _header(hit: Hit, text: str, lowered: str) -> list[Cause]:
    why = hit.match[0][-120:]
    damaged = Cause("PD204", f"the safetensors file is damaged or truncated ({why})",
                    "re-download or re-save the weights; `peftdoctor check ADAPTER` says what is wrong with the file")
    if knowledge.mentions(lowered, knowledge.ZERO3_HINTS):
        return [damaged, Cause("PD214", "saved right after DeepSpeed ZeRO-3 training: the weights may be "
                               "un-gathered partitions", ZERO3_FIX)]
    if re.search(r"header ?too ?large", why, re.IGNORECASE):  # a text file's first 8 bytes read as a length
        return [_lfs_pointer("the header length, read from the file's first 8 bytes, is absurd: the file is text, "
                             "most often a Git LFS pointer ('version https://git-lfs...')"), damaged]
    return [damaged]


def _lfs_pointer(why: str) -> Cause:
    return Cause("PD362", f"{why}, not the weights: the repo was cloned without git-lfs", LFS_FIX)


def _missing_config(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [_no_adapter_config(lowered)]


def _adapter_name_in_prefix(hit: Hit, text: str, lowered: str) -> list[Cause]:
    name, prefix = hit.group("adapter_name") or "this adapter", hit.group("prefix") or "the tuner's prefix"
    return [Cause("PD370", f"the adapter is named {name!r}, a part of {prefix!r}, the prefix of the tuner's weight "
                  f"keys ({hit.message.where()}): its saved weights can be mistaken for other keys and left "
                  "re-initialised on load", f"use an adapter_name that is no part of {prefix!r}: "
                  "PeftModel.from_pretrained(base, ADAPTER, adapter_name='default') (or get_peft_model(..., "
                  "adapter_name='default'))")]


def _offloaded(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [Cause("PD368", f"device_map put part of the model on disk ({hit.message.where()}: {hit.match[0][:160]})",
                  "pass offload_folder=DIR to the base's from_pretrained and to PeftModel.from_pretrained, or load "
                  "the base on devices with room for it (device_map={'': 0})")]


def _one_directory(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [Cause("PD369", f"the directory holds both a model config.json and adapter_config.json "
                  f"({hit.message.where()} refuses to guess which to load)", "keep the adapter and the model in two "
                  "directories (or repos); or merge the adapter and keep only the merged model")]


def _not_a_path(hit: Hit, text: str, lowered: str) -> list[Cause]:
    return [Cause("PD363", f"{hit.group('path_or_repo_id') or 'the path given'} is not an existing local directory, "
                  "so it was tried as a Hub repo id, which it is not", "pass the adapter's directory (the one "
                  "save_pretrained() wrote, holding adapter_config.json), not a file or a path that does not exist")]


# Words that put a text about peft's own refusals in context: without one, a generic wording (every
# message of a whole area, codes.AREAS) is not claimed.
_PEFT_WORDS = ("peft", "lora", "adapter")


def _area(hit: Hit, text: str, lowered: str) -> list[Cause]:
    """A message whose code came from its area (codes.AREAS): claimed only in context, worded by the
    message itself and the releases that print it."""
    package = hit.message.package
    if package in knowledge.WRAPPERS:
        if knowledge.WRAPPERS[package] not in knowledge.callers(lowered):
            return []
    elif not knowledge.mentions(lowered, _PEFT_WORDS):
        return []
    code = hit.message.code or "PD008"
    return [Cause(code, f"{hit.message.area} ({hit.message.where()}): {hit.match[0][:200]}", _AREA_FIXES[code])]


# What to do about a message whose code came from its area: the message itself names the detail.
_AREA_FIXES = {
    "PD104": "`peftdoctor check ADAPTER --peft RELEASE` names the value the release refuses; "
             "`peftdoctor fix ADAPTER` rewrites what has an exact equivalent",
    "PD301": "`peftdoctor check ADAPTER` checks the config and weights against the installed peft; "
             "`peftdoctor verify ADAPTER` loads it on its base the way peft does",
    "PD371": "change the setting the wrapper names; or save the adapter (save_pretrained) and load or merge it "
             "with peft itself (`peftdoctor verify ADAPTER --out DIR` merges)",
}


def _generic(hit: Hit, text: str, lowered: str) -> list[Cause]:
    from peftdoctor.rules.registry import rule

    summary = rule(hit.message.code or "PD008").summary
    return [Cause(hit.message.code or "PD008", f"{summary.rstrip('.')} ({hit.message.where()}: "
                  f"{hit.match[0][:200]})",
                  _AREA_FIXES.get(hit.message.code or "", "see `peftdoctor rules` for the code"))]


DECIDERS: dict[str, Callable[[Hit, str, str], list[Cause]]] = {
    "PD354": _merge_refused, "PD408": _rank_limit, "PD416": _no_lora_architecture, "PD405": _unsupported_weight,
    "PD415": _ignored_modules, "PD364": _vocab_limit, "PD360": _no_targets, "PD204": _header,
    "PD004": _missing_config, "PD403": _dora,
    "PD406": _engine_feature("lora_bias"), "PD407": _engine_feature("bias"),
    "PD413": _engine_feature("base_mutating_init"), "PD370": _adapter_name_in_prefix, "PD368": _offloaded,
    "PD369": _one_directory, "PD363": _not_a_path,
}
# Codes the older pattern table already words well: a catalogue hit only adds the releases.
OLDER_TABLE_CODES = frozenset({"PD350", "PD355", "PD356", "PD116", "PD114", "PD501", "PD502", "PD503", "PD106"})


def catalogue_hits(text: str, lowered: str, area: bool = False) -> Iterator[Diagnosis]:
    """The catalogue's messages a MAP row names; with `area`, those whose code came from their area."""
    for hit in catalogue.find(text, lowered, area):
        code = hit.message.code or ""
        if code in OLDER_TABLE_CODES:
            continue
        causes = (_area if hit.message.area else DECIDERS.get(code, _generic))(hit, text, lowered)
        ranked_first = causes[0].code if causes else code  # another cause ranks first: the older table's claim goes
        yield _d(hit.match[0], *causes, source=f"{hit.message.id} ({hit.message.where()})",
                 replaces=(code,) if ranked_first != code else (),
                 weak=hit.message.area is not None)
