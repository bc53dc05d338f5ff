"""Copy the unchanged bytes of the output in a worker thread while torch, transformers and peft load.

Importing them costs seconds (peft's top-level import pulls in transformers) that a plain copy of the
shards does not pay. When the output layout follows from the safetensors headers alone (see
run._header_layout), nothing about the unchanged tensors needs torch: a worker thread writes each
shard's header and copies its unchanged tensors into place (copy_file_range releases the GIL), while
the merged tensors' byte ranges wait for write_shard. The imports stay in the main thread, where
libraries that install signal handlers or check for the main thread expect them.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

from peftdoctor.merge.stream import OutShard, Raw, prefill_shard


class Prefill:
    """Prefills `shards` in `directory`, in order, one shard at a time (the copy is I/O bound)."""

    def __init__(self, directory: Path, shards: tuple[OutShard, ...], stand_ins: Mapping[str, Raw]) -> None:
        self.directory = directory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftdoctor-prefill")
        self._done: dict[str, Future[None]] = {
            s.name: self._pool.submit(prefill_shard, directory / s.name, s, stand_ins) for s in shards}

    def wait(self, name: str) -> None:
        """Block until shard `name` is prefilled; the worker's error (disk full, ...) is raised here."""
        self._done[name].result()

    def abandon(self) -> None:
        """Stop and delete what was prefilled: the real layout turned out to differ from the guess."""
        self.close()
        for name in self._done:
            (self.directory / name).unlink(missing_ok=True)

    def close(self) -> None:
        # Cancel shards not started and wait for the one in progress, so that no thread writes into
        # the staging directory after it is renamed or removed.
        self._pool.shutdown(wait=True, cancel_futures=True)
