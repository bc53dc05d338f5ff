"""Read and merge the next changed tensors in a worker thread while the main thread writes.

write_shard asks for the changed tensors one by one, in file order. `Ahead` has a worker produce
them (read the base bytes, matmul, add, check finiteness) up to `depth` tensors ahead of the
writer: torch's matmuls, numpy's checks, file reads and pwrite all release the GIL, so reading,
computing and writing overlap. One worker keeps the order (the producer holds state, e.g. a weight
and bias produced together) and leaves torch's own threads the cores; memory holds at most
depth + 1 produced tensors. ReadAhead, in a second thread, reads the base tensors the worker will
merge next, so that its file reads overlap the matmuls too. Flusher, in a third, fsyncs each shard
once it is written, so that the disk writes it back while the next one is computed.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from peftdoctor.merge.stream import OutTensor, Producer, fsync_file


class Ahead:
    """A Producer that answers from results computed ahead, in the order of `tensors`."""

    def __init__(self, produce: Producer, tensors: Iterable[OutTensor], depth: int = 2) -> None:
        self._produce = produce
        self._todo = iter(list(tensors))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftdoctor-merge")
        self._queued: deque[tuple[str, Future[Any]]] = deque()
        for _ in range(max(1, depth)):
            self._submit()

    def _submit(self) -> None:
        tensor: Optional[OutTensor] = next(self._todo, None)
        if tensor is not None:
            self._queued.append((tensor.name, self._pool.submit(self._produce, tensor)))

    def __call__(self, tensor: OutTensor) -> Any:
        if not self._queued:
            raise RuntimeError(f"{tensor.name}: not planned")
        name, future = self._queued.popleft()
        if name != tensor.name:
            raise RuntimeError(f"{tensor.name}: asked out of order (expected {name})")
        self._submit()
        return future.result()  # the worker's exception, if any, is raised here

    def close(self) -> None:
        """Cancel what has not started and wait for the tensor in progress: nothing runs after this."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queued.clear()

    def __enter__(self) -> "Ahead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ReadAhead:
    """Runs `read(*key)` for the planned `keys` in a reader thread, up to `depth` keys ahead of `get`,
    so that the worker's matmuls overlap the next file reads. A key asked out of plan is read directly."""

    def __init__(self, read: Callable[..., Any], keys: Iterable[tuple[Any, ...]], depth: int = 2) -> None:
        self._read = read
        self._todo = iter(list(keys))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftdoctor-read")
        self._queued: deque[tuple[tuple[Any, ...], Future[Any]]] = deque()
        for _ in range(max(1, depth)):
            self._submit()

    def _submit(self) -> None:
        key = next(self._todo, None)
        if key is not None:
            self._queued.append((key, self._pool.submit(self._read, *key)))

    def get(self, *key: Any) -> Any:
        if not self._queued or self._queued[0][0] != key:
            return self._read(*key)
        _, future = self._queued.popleft()
        self._submit()
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queued.clear()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
