"""Read and merge the next changed tensors in worker threads while the main thread writes.

write_shard asks for the changed tensors one by one, in file order. A `RunAhead` over the producer has
a worker produce them (read the base bytes, matmul, add, check finiteness) up to `depth` tensors
ahead of the writer: torch's matmuls, numpy's checks, file reads and pwrite all release the GIL, so
reading, computing and writing overlap. One worker keeps the order (the producer holds state, e.g.
a weight and bias produced together) and leaves torch's own threads the cores; memory holds at most
depth + 1 produced tensors. A second RunAhead, over the reader, reads the base tensors the worker
will merge next, so that its file reads overlap the matmuls too. Flusher, in a third thread, fsyncs
each shard once it is written, so that the disk writes it back while the next one is computed.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from peftdoctor.merge.stream import fsync_file


class RunAhead:
    """`get(key)` answers `run(key)` for the planned `keys`, in their order, from one worker thread that runs
    up to `depth` keys ahead. A key asked out of plan is run directly by `unplanned` when given (a read the
    plan did not foresee), else refused: the producer's plan and the writer's order must agree."""

    def __init__(self, run: Callable[[Any], Any], keys: Iterable[Any], depth: int = 2, thread: str = "peftdoctor",
                 unplanned: Optional[Callable[[Any], Any]] = None) -> None:
        self._run, self._unplanned = run, unplanned
        self._todo = iter(list(keys))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread)
        self._queued: deque[tuple[Any, Future[Any]]] = deque()
        for _ in range(max(1, depth)):
            self._submit()

    def _submit(self) -> None:
        key = next(self._todo, None)
        if key is not None:
            self._queued.append((key, self._pool.submit(self._run, key)))

    def get(self, key: Any) -> Any:
        if self._queued and self._queued[0][0] == key:
            _, future = self._queued.popleft()
            self._submit()
            return future.result()  # the worker's exception, if any, is raised here
        if self._unplanned is not None:
            return self._unplanned(key)
        if not self._queued:
            raise RuntimeError(f"{_name(key)}: not planned")
        raise RuntimeError(f"{_name(key)}: asked out of order (expected {_name(self._queued[0][0])})")

    def close(self) -> None:
        """Cancel what has not started and wait for the key in progress: nothing runs after this."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queued.clear()

    def __enter__(self) -> "RunAhead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _name(key: Any) -> Any:
    return getattr(key, "name", key)  # an OutTensor by its name


class Flusher:
    """fsyncs finished shards in a thread, one after the other, so that the disk writes shard k back
    while shard k + 1 is computed (the kernel's own write-back starts only at dirty_background_ratio
    of memory, which a model-sized merge may never reach). wait() returns once all are on disk and
    raises the first fsync's error."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftdoctor-flush")
        self._pending: list[Future[None]] = []

    def flush(self, path: Path) -> None:
        self._pending.append(self._pool.submit(fsync_file, path))

    def wait(self) -> None:
        for future in self._pending:
            future.result()
        self._pending.clear()

    def __enter__(self) -> "Flusher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
