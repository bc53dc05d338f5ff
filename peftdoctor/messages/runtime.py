"""Messages of what runs around peft, whose wording no catalogued release holds: CPython's import error
for a peft x transformers pair that does not fit, torch's and accelerate's refusals of an offloaded base.

Their causes come from the text (the releases it names, the paths of its frames) and from the catalogue's
peft_transformers_imports: which peft releases import each name from transformers at import time.
"""
from __future__ import annotations

from typing import Iterator, Optional

from peftdoctor.messages import catalogue
from peftdoctor.messages.diagnosis import Cause, Diagnosis
from peftdoctor.messages.diagnosis import make as _d
from peftdoctor.messages.diagnosis import regex as _re
from peftdoctor.messages.diagnosis import search as _search

_TF_IMPORT = _re(r"cannot import name '(?P<name>\w{1,100})' from 'transformers'")
# A release named in a text: `peft==0.13.2`, `peft 0.13.2`, `PEFT version: 0.12.0`, `peft-0.13.2.dist-info`.
_RELEASE = (r"(?<![\w-]){name}(?:[ \t]{{0,4}}(?:version)?[ \t]{{0,4}}[:=]{{0,2}}[ \t]{{0,4}}|-|==|/)"
            r"v?(?P<v>\d{{1,3}}\.\d{{1,3}}(?:\.\d{{1,3}})?(?:\.?dev\d{{1,6}})?)(?![\w.])")
_RELEASES = {name: _re(_RELEASE.format(name=name)) for name in ("peft", "transformers", "vllm", "sglang")}
_META = _re(r"Cannot copy out of meta tensor|Tensor on device meta is not on the expected device"
            r"|(?P<offload>We need an [`'\"]?offload[_-]dir[`'\"]? to dispatch this model)")


def release_in(text: str, package: str) -> Optional[str]:
    """The release of `package` the text names (the last one), if any: `peft==0.13.2` -> "0.13.2"."""
    found = None
    for m in _RELEASES[package].finditer(text[-200_000:]):
        found = m["v"]
    return found


def runtime_wordings(text: str, lowered: str) -> Iterator[Diagnosis]:
    m = _search(_TF_IMPORT, text, lowered, "from 'transformers'")
    if m:
        cause = _import_pair(m["name"], release_in(text, "peft"), release_in(text, "transformers"))
        if cause is not None:
            yield _d(m[0], cause)
    m = _search(_META, text, lowered, "meta") or _search(_META, text, lowered, "to dispatch this model")
    if m:
        yield _d(m[0], _offloaded(bool(m["offload"])))


def _versions(spans: list[str]) -> tuple[str, str]:
    return spans[0].split("..")[0], spans[-1].split("..")[-1]


def _import_pair(name: str, peft: Optional[str], transformers: Optional[str]) -> Optional[Cause]:
    """`import peft` failed on `name`: which releases import it says whether transformers is too old for
    this peft (the newest peft still imports it) or too new (peft stopped importing it: it was removed)."""
    doc = catalogue.load()
    spans = doc.get("peft_transformers_imports", {}).get(name)
    newest = doc["releases"]["peft"][-1]
    if not spans:
        return None  # no peft release imports it: the caller's own import, not the pair
    first, last = _versions(spans)
    installed = f"peft {peft}" if peft else "the installed peft"
    tf = f"transformers {transformers}" if transformers else "the installed transformers"
    if first == doc["releases"]["peft"][0]:
        return Cause("PD380", f"{installed} imports {name} from transformers, as every peft release does, and "
                     f"{tf} lacks it: transformers is broken or "
                     "is not the one you think", "check `python -c \"import transformers; print(transformers."
                     "__version__, transformers.__file__)\"` and reinstall transformers")
    if last == newest:
        older = _release_before(first)
        return Cause("PD380", f"{installed} imports {name} from transformers (peft {first} and later do), and "
                     f"{tf} is older than that name",
                     f"upgrade transformers (`pip install -U transformers`), or pin peft=={older} (the last "
                     f"release that does not import {name})" if older else "upgrade transformers")
    return Cause("PD380", f"{installed} imports {name} from transformers (peft {first} to {last} do), and "
                 f"{tf} no longer has it",
                 f"upgrade peft past {last} (`pip install -U peft`), or pin transformers to a release that still "
                 f"exports {name}")


def _release_before(first: str) -> Optional[str]:
    order = catalogue.load()["releases"]["peft"]
    at = order.index(first)
    return order[at - 1] if at > 0 else None


def _offloaded(dispatch: bool) -> Cause:
    if dispatch:
        return Cause("PD368", "device_map put part of the base on disk, and PeftModel.from_pretrained dispatches "
                     "the model again without a folder for the offloaded weights",
                     "pass offload_folder=DIR to PeftModel.from_pretrained as to the base's from_pretrained; "
                     "or load the base on devices with room for it (device_map={'': 0})")
    return Cause("PD368", "a part of the model is on the meta device: device_map='auto' offloaded the base (or "
                 "never loaded some weights), and loading or merging the adapter needs those weights",
                 "load the base where it fits whole (device_map={'': 0}, or on CPU to merge), or give the base and "
                 "PeftModel.from_pretrained the same offload_folder")

