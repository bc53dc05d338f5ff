"""vLLM LoRA resolver plugin: checks each adapter a client asks for by name against the running vLLM
release before vLLM loads it, serves an exact fixed copy when a config rewrite exists, and refuses with one
log line naming the finding when none does (vLLM itself would answer the client with a bare 400).

vLLM calls every `vllm.general_plugins` entry point in each of its processes (vllm/plugins/__init__.py
`load_general_plugins`); `register` is ours (pyproject.toml). With runtime LoRA updating on
(VLLM_ALLOW_RUNTIME_LORA_UPDATING=1), a request for an unknown model name goes to every registered
`LoRAResolver` (vllm/lora/resolver.py, from vLLM 0.8.5) through `OpenAIServingModels.resolve_lora`, which
then loads what the resolver returns with `add_lora`. Nothing here imports vllm until vLLM calls it.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from peftdoctor.engines import parse_target
from peftdoctor.errors import PeftdoctorError, UsageError, one_line
from peftdoctor.render.terminal import line

DIRS_ENV = "PEFTDOCTOR_VLLM_ADAPTER_DIRS"
HUB_ENV = "PEFTDOCTOR_VLLM_HUB"
RANK_ENV = "PEFTDOCTOR_VLLM_MAX_LORA_RANK"
RESOLVER_NAME = "peftdoctor"
FIRST_RELEASE = "0.8.5"  # the first vllm wheel with vllm/lora/resolver.py (0.8.4 has none)
# A child of vLLM's "vllm" logger: vLLM's logging config gives that one its handler, so the line lands in
# the server log, formatted like vLLM's own.
log = logging.getLogger("vllm.peftdoctor")


@dataclass(frozen=True)
class Settings:
    """Where adapters come from and what they are checked for; read once when vLLM loads the plugin."""

    directories: tuple[Path, ...]
    hub: bool
    release: str  # the running vllm.__version__
    max_lora_rank: Optional[int]  # the server's --max-lora-rank; None: the release's default
    cache_dir: Optional[Path] = None  # None: serving/cache.py's default

    @property
    def target(self) -> str:
        return f"vllm=={self.release}"


def _rank_flag(argv: Sequence[str]) -> Optional[str]:
    """The value of `--max-lora-rank` on the server's command line (vLLM's parser also takes underscores)."""
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag.replace("_", "-") == "--max-lora-rank":
            return value if value else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def settings_from(environ: Mapping[str, str], argv: Sequence[str], release: str) -> Settings:
    """Settings from the plugin's environment variables and `vllm serve`'s command line. The resolver is
    handed only names, and vLLM keeps the server's LoRAConfig out of a plugin's reach in the API server
    process, so the rank limit is $PEFTDOCTOR_VLLM_MAX_LORA_RANK, else the --max-lora-rank vLLM was started
    with. UsageError or UnusableInput (one line) for a setting that cannot work."""
    directories = tuple(Path(d) for d in environ.get(DIRS_ENV, "").split(os.pathsep) if d)
    raw = environ.get(RANK_ENV) or _rank_flag(argv)
    try:
        rank = None if raw is None else int(raw)
    except ValueError:
        rank = 0
    if rank is not None and rank < 1:
        where = RANK_ENV if environ.get(RANK_ENV) else "--max-lora-rank"
        raise UsageError(f"{where} {raw!r} is not a positive whole number")
    missing = [str(d) for d in directories if not d.is_dir()]
    if missing:
        raise UsageError(f"{DIRS_ENV}: {missing[0]} is not a directory")
    settings = Settings(directories, environ.get(HUB_ENV, "") == "1", release, rank)
    parse_target(settings.target)  # a vllm.__version__ that is no version: say so once, not per adapter
    return settings


def lora_int_id(name: str, path: str) -> int:
    """A positive id for (name, path), the same in every process and run (vLLM's own resolvers use
    abs(hash(name)), which changes with PYTHONHASHSEED and can be 0). vLLM's caller replaces it with its own
    counter (serving_models.resolve_lora); a direct caller still gets one id per adapter copy."""
    digest = hashlib.sha256(f"{name}\0{path}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:7], "big") + 1


def resolve_path(settings: Settings, lora_name: str, base_model_name: Optional[str] = None) -> Optional[Path]:
    """The directory vLLM should load for `lora_name`, or None: not ours (quiet, another resolver may
    know it) or refused (one warning line naming the finding). `base_model_name`: the model vLLM serves; where
    its config.json is at hand (a directory, or a repo id in the local cache) the adapter is checked against
    it (an adapter of another base: PD220-PD222). Blocking: it reads, and may copy or download; the resolver
    runs it in a thread."""
    from peftdoctor.serving.prepare import find_adapter, prepare

    try:
        source = find_adapter(lora_name, directories=settings.directories, hub=settings.hub)
    except PeftdoctorError as exc:  # the Hub could not be asked: one line, never a traceback in the server
        log.warning(line(f"peftdoctor: {lora_name} refused: {one_line(exc)}"))
        return None
    if source is None:
        log.debug("peftdoctor: no adapter named %r in %s", lora_name, DIRS_ENV)
        return None
    prepared = prepare(source, settings.target, name=lora_name, cache_dir=settings.cache_dir,
                       max_lora_rank=settings.max_lora_rank, base=base_model_name)
    (log.warning if prepared.refused else log.info)(prepared.line)
    return prepared.path


@lru_cache(maxsize=None)
def resolver_type() -> type:
    """PeftdoctorResolver, a subclass of the running vLLM's LoRAResolver (made on first use: the base
    class exists only once vllm is imported). ImportError on a vLLM without the resolver API."""
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class PeftdoctorResolver(LoRAResolver):
        """Resolves adapter names from the configured directories (and the Hub), checked first."""

        def __init__(self, settings: Settings) -> None:
            self.settings = settings

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Optional[Any]:
            try:
                path = await asyncio.to_thread(resolve_path, self.settings, lora_name, base_model_name)
            except Exception as exc:  # noqa: BLE001 - a bug of ours must not fail the request: refuse, one line
                log.error(line(f"peftdoctor: {lora_name} refused: {type(exc).__name__}: {one_line(exc)}"))
                return None
            if path is None:
                return None
            return LoRARequest(lora_name=lora_name, lora_int_id=lora_int_id(lora_name, str(path)),
                               lora_path=str(path))

    return PeftdoctorResolver


def register() -> None:
    """The `vllm.general_plugins` entry point: register the resolver with the running vLLM, or say in one
    line why not. Called once per vLLM process; registering again replaces the earlier instance."""
    import vllm

    release = getattr(vllm, "__version__", "unknown")
    try:
        settings = settings_from(os.environ, sys.argv, release)
        from vllm.lora.resolver import LoRAResolverRegistry

        resolver = resolver_type()(settings)
    except ImportError:
        log.warning(f"peftdoctor: vllm {release} has no LoRA resolver API (vllm>={FIRST_RELEASE}); "
                    "nothing registered")
        return
    except PeftdoctorError as exc:
        log.warning(line(f"peftdoctor: resolver not registered: {one_line(exc)}"))
        return
    if not settings.directories and not settings.hub:
        log.warning(f"peftdoctor: resolver not registered: set {DIRS_ENV} (or {HUB_ENV}=1)")
        return
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    rank = settings.max_lora_rank or "the release's default"
    log.info(f"peftdoctor: LoRA resolver registered for vllm {release} (max-lora-rank {rank})")
    import vllm.envs

    if not vllm.envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
        log.warning("peftdoctor: vLLM asks resolvers only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1")
