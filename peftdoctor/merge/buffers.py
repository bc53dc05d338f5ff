"""Model-sized byte buffers that the streaming merge reuses instead of allocating per tensor.

Every changed tensor of a merge needs two model-sized buffers: the base weight read from its shard
(merged into in place, then written out) and the LoRA product B @ A. Allocating them afresh per
module costs more than the arithmetic: the kernel maps and zeroes every page of every new buffer
(on the 2 GB all-linear bench, about half of the compute stage's CPU time was page faults). A merge
uses few distinct sizes (a Llama has three), so buffers handed back are kept by size and handed out
again. Ownership is explicit: whoever takes a buffer gives it back once nothing reads it any more
(the writer after pwrite, the producer for inputs that are not outputs); a buffer never given back
is freed as usual. At most `keep_bytes` of idle buffers are kept, so memory stays bounded.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class BufferPool:
    """Flat uint8 torch tensors by size, shared by the merge's reader, worker and writer threads."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._idle: OrderedDict[int, list[Any]] = OrderedDict()  # nbytes -> idle buffers, oldest size first
        self._idle_bytes = 0
        self._made: dict[int, int] = {}  # data pointer -> nbytes of every buffer handed out and not back
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again rather than allocated

    def take(self, nbytes: int) -> Any:
        """A uint8 tensor of `nbytes` (contents undefined)."""
        if nbytes == 0:  # nothing to reuse, and every empty tensor has the same data pointer
            import torch

            return torch.empty(0, dtype=torch.uint8)
        with self._lock:
            idle = self._idle.get(nbytes)
            buffer = idle.pop() if idle else None
            if buffer is not None:
                self._idle_bytes -= nbytes
                self.reused += 1
        if buffer is None:
            import torch

            buffer = torch.empty(nbytes, dtype=torch.uint8)
        with self._lock:
            self._made[buffer.data_ptr()] = nbytes
        return buffer

    def give(self, tensor: Any) -> bool:
        """Take back the buffer behind `tensor` (any view of a buffer from take()) for reuse; False, and
        nothing kept, for a tensor whose memory the pool did not hand out."""
        storage = tensor.untyped_storage()
        pointer, nbytes = storage.data_ptr(), storage.nbytes()
        with self._lock:
            if self._made.get(pointer) != nbytes:
                return False
            del self._made[pointer]
            if nbytes > self.keep_bytes:
                return True
            import torch

            flat = torch.empty(0, dtype=torch.uint8).set_(storage)
            self._idle.setdefault(nbytes, []).append(flat)
            self._idle.move_to_end(nbytes)
            self._idle_bytes += nbytes
            while self._idle_bytes > self.keep_bytes:  # drop the sizes not used for the longest time
                size, buffers = next(iter(self._idle.items()))
                buffers.pop(0)
                self._idle_bytes -= size
                if not buffers:
                    del self._idle[size]
        return True

    def scratch(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A tensor of `shape` and `dtype` over a pooled buffer (contents undefined); give() it back."""
        count = 1
        for dim in shape:
            count *= dim
        return self.take(count * dtype.itemsize).view(dtype).reshape(shape)
