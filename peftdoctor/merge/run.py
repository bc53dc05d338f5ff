"""`merge`: stream a LoRA adapter into a safetensors base, a few tensors in memory at a time.

The base is read tensor by tensor and written once: tensors the adapter does not touch are copied
byte for byte (or cast, with --dtype), targeted weights are merged with torch alone in peft's order
(merge/delta.py) or, for the variants that need it, by peft's own layer code (merge/layer.py),
modules_to_save copies replace the base's tensors. A worker thread produces the merged tensors
ahead of the writer (merge/pipeline.py). When the headers say enough (merge/shortcut.py), the base's
model class is never built, so neither transformers nor peft is imported. Peak memory is the adapter
plus a few of the largest merged tensors, whatever the model's size.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput, WriteFailed, import_holding_interrupts, message_line
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.base import open_base
from peftdoctor.io.files import FileRefused, copy_inside, require_safe
from peftdoctor.io.machine import memory_available
from peftdoctor.io.safetensors import expected_nbytes, read_header
from peftdoctor.io.staging import check_out, staged, write_failure
from peftdoctor.io.tokenizer import tokenizer_files, tokenizer_source
from peftdoctor.merge import delta as D
from peftdoctor.merge import plan as P
from peftdoctor.merge.buffers import BufferPool
from peftdoctor.merge.layer import HEADERS_ONLY
from peftdoctor.merge.pipeline import Flusher, RunAhead
from peftdoctor.merge.prefill import Prefill
from peftdoctor.merge.result import MergeReport, equality_statement, peak_rss
from peftdoctor.merge.shortcut import needs_model_class
from peftdoctor.merge.stream import (
    OutShard,
    OutTensor,
    Raw,
    free_space_problem,
    read_exact,
    write_index,
    write_json,
    write_shard,
)
from peftdoctor.model.adapter import Adapter
from peftdoctor.peft import targeting

DTYPES = ("auto", "float32", "bfloat16", "float16")
Progress = Callable[[str], None]


@dataclass
class _Job:
    """Produces some output tensors at once (a module's weight and bias, or a tied pair)."""

    kind: str  # "lora", "copy", "cast"
    module: str = ""
    params: dict[str, str] = field(default_factory=dict)  # layer param -> base checkpoint name it starts from
    outputs: dict[str, str] = field(default_factory=dict)  # output tensor name -> layer param (or "")
    adapter_key: str = ""  # "copy": the saved tensor; "cast": unused


# Output shards, the job producing each changed tensor, and the tied names written separately, each
# with the tie it had: (name written, name it was tied to).
_Layout = tuple[tuple[OutShard, ...], dict[str, _Job], list[tuple[str, str]]]


def stream_merge(adapter: str, base: Optional[str], out: str, *, dtype: str = "auto", device: str = "cpu",
                 progress: Optional[Progress] = None, allow_noop: bool = False,
                 trust_remote_code: bool = False) -> MergeReport:
    """Merge `adapter` into `base` (a directory or cached repo id) and write the result to `out`.
    trust_remote_code: a base that ships its own model code may run it to tell its structure.

    Raises UnusableInput (exit 2), P.MergeRefused (exit 1) or WriteFailed (exit 2), each one line.
    """
    started = time.monotonic()
    say = progress or (lambda _message: None)
    if dtype not in DTYPES:
        raise UnusableInput(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    found = open_adapter(adapter)
    if found.kind != "peft-adapter" or found.config is None:
        raise UnusableInput(f"{adapter}: not a usable PEFT adapter ({found.config_error or found.kind}); "
                            f"run `peftdoctor check {adapter}`")
    require_safe(found.directory, found.display)
    config = found.config
    why = P.refusal(config) or P.weights_refusal(found, allow_noop)
    if why:
        raise P.MergeRefused(why)
    name = base or config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        raise UnusableInput(f"{adapter}: names no base_model_name_or_path; pass --base PATH_OR_REPO_ID")
    out_path = check_out(out)
    base_files = P.read_layout(open_base(name))  # a directory, or the local hub cache (never downloads)
    display = base_files.display
    P.require_weights(found)
    adapter_files = found
    adapter_plan = P.adapter_plan(adapter_files)
    guess = _header_layout(base_files, adapter_plan, adapter_files, dtype)
    if guess is not None:
        _require_space(out_path, guess[0])
    try:
        with staged(out_path, say) as staging:
            # Known layout: copy the unchanged bytes while torch loads, fill in the merged ones after.
            prefill = Prefill(staging, guess[0], _stand_ins(base_files)) if guess is not None else None
            try:
                _check_device(device)  # torch from here on
                headers = guess if guess is not None else _headers_only(base_files, adapter_plan, adapter_files, dtype)
                if needs_model_class(base_files, adapter_plan, config, headers) is None:
                    skeleton, layout = HEADERS_ONLY, headers  # neither transformers nor peft is imported
                else:
                    say("reading the base's structure")
                    from peftdoctor.merge.layer import load_skeleton  # transformers from here on

                    skeleton = load_skeleton(base_files.directory, config.get("task_type"),
                                             trust_remote_code=trust_remote_code)
                    layout = _layout(base_files, adapter_plan, adapter_files, skeleton, dtype)
                assert layout is not None
                if prefill is not None and layout != guess:  # the model class ties or renames tensors
                    prefill.abandon()
                    prefill = None
                shards, jobs, untied = layout
                if prefill is None:
                    _require_space(out_path, shards)
                producer = _Producer(base_files, adapter_files, skeleton, jobs, shards, device, found.directory, say)
                changed = [t for s in shards for t in s.tensors if not isinstance(t.source, Raw)]
                # Exits in reverse: the worker stops before the reader it reads from, the flusher last.
                with Flusher() as flusher, \
                        RunAhead(producer.read_key, _reads(jobs, changed), 1, "peftdoctor-read",
                                 unplanned=producer.read_key) as reads, \
                        RunAhead(producer, changed, 2, "peftdoctor-merge") as ahead:
                    producer.reads = reads
                    for number, shard in enumerate(shards, 1):
                        say(f"writing shard {number}/{len(shards)} ({shard.name})")
                        if prefill is not None:
                            prefill.wait(shard.name)
                        write_shard(staging / shard.name, shard, ahead.get, sync=False, written=producer.written)
                        flusher.flush(staging / shard.name)  # to disk while the next shard is computed
                    flusher.wait()
            finally:
                if prefill is not None:
                    prefill.close()
            if base_files.sharded:
                write_index(staging, shards)
            _copy_side_files(base_files, found.directory, staging, dtype, bool(untied))
    except FileRefused as exc:  # a side file (tokenizer, generation config) turned into a link out since the start
        raise UnusableInput(f"{exc}; nothing was left at {out_path}") from None
    except OSError as exc:
        raise write_failure(exc, out_path) from None
    notes = [skeleton.note] if skeleton.note else []
    if producer.ignored:
        notes.append(f"peft builds no layer for {', '.join(sorted(producer.ignored)[:3])} (not matched by "
                     "target_modules), so their saved LoRA weights were ignored, as peft ignores them")
    return MergeReport(
        adapter=found.display, base=display, out=str(out_path), dtype=dtype, device=device,
        tensors_merged=producer.merged, tensors_replaced=producer.replaced,
        tensors_passed=sum(len(s.tensors) for s in shards) - producer.merged - producer.replaced,
        bytes_written=sum(s.nbytes for s in shards), seconds=round(time.monotonic() - started, 3), peak_rss_bytes=peak_rss(),
        shards=len(shards), untied=tuple(name for name, _ in untied),
        equality=equality_statement(device, dtype, _ties(untied, adapter_plan)), notes=tuple(notes))


def _ties(untied: list[tuple[str, str]], plan: P.AdapterPlan) -> tuple[tuple[str, str], ...]:
    """Each undone tie as (the adapted tensor, the partner peft's own merge would change through it)."""
    ties = []
    for name, partner in untied:
        adapted = name.rsplit(".", 1)[0] in plan.lora
        ties.append((name, partner) if adapted else (partner, name))
    return tuple(ties)


def _check_device(device: str) -> None:
    # Before torch's first allocation: large tensors on transparent huge pages (madvise), which makes
    # the model-sized buffers of a merge ~2x cheaper to fault in. Read once by torch; the user's setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    torch = import_holding_interrupts("torch")

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UnusableInput(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UnusableInput(f"--device {device}: no CUDA device is available here; use --device cpu")


def _header_layout(base: P.BaseLayout, plan: P.AdapterPlan, adapter: Adapter,
                   dtype: str) -> Optional[_Layout]:
    """The layout as far as the safetensors headers tell it, or None where a cast needs torch.

    Without the model class it cannot see tied weights or a base-model prefix; the caller uses it as
    it is only where merge/shortcut.py finds nothing the model class could change, else checks it
    against the real layout once the skeleton is built and falls back to writing everything if they
    differ, so the output never depends on this guess.
    """
    if dtype != "auto":  # every tensor is cast: there is nothing to copy unchanged
        return None
    return _headers_only(base, plan, adapter, dtype)


def _headers_only(base: P.BaseLayoutLayout, plan: P.AdapterPlan, adapter: Adapter, dtype: str) -> Optional[_Layout]:
    try:
        return _layout(base, plan, adapter, HEADERS_ONLY, dtype)
    except P.MergeRefused:  # e.g. a weight found only under the model's prefix: let the real layout decide
        return None


def _stand_ins(base: P.BaseLayout) -> dict[str, Raw]:
    """Each base tensor's bytes by name: what a merged tensor's range holds until it is computed."""
    return {name: Raw(shard.path, shard.data_start + info.start, info.end - info.start)
            for name, (shard, info) in base.locations.items()}


def _require_space(out: Path, shards: tuple[OutShard, ...]) -> None:
    problem = free_space_problem(out.parent, sum(s.nbytes for s in shards))
    if problem:
        raise WriteFailed(problem)


def _out_dtype(code: str, dtype: str) -> str:
    # from_pretrained(dtype=X) casts floating-point tensors only; integer buffers keep their type.
    return P.DTYPE_CODES[dtype] if dtype != "auto" and code in P.FLOAT_DTYPES else code


def _layout(base: P.BaseLayout, plan: P.AdapterPlan, adapter: Adapter, skeleton: Any, dtype: str) -> _Layout:
    """Every output tensor (name, dtype, shape, where its bytes come from), shard by shard."""
    jobs: dict[str, _Job] = {}
    for module, delta in plan.lora.items():
        weight = P.checkpoint_name(base, f"{module}.weight", skeleton.prefix)
        source = weight or _tied_source(base, skeleton, f"{module}.weight")
        if source is None:
            raise P.MergeRefused(f"the adapter changes {module} but the base has no tensor {module}.weight: "
                                 "is --base the model this adapter was trained on?")
        job = _Job("lora", module, params={"weight": source}, outputs={weight or f"{module}.weight": "weight"})
        bias = P.checkpoint_name(base, f"{module}.bias", skeleton.prefix)
        if bias and adapter.config.get("lora_bias"):
            job.params["bias"] = bias
            job.outputs[bias] = "bias"
        for name in job.outputs:
            jobs[name] = job
    for model_name, key in plan.copies.items():
        target = P.checkpoint_name(base, model_name, skeleton.prefix) or model_name
        jobs[target] = _Job("copy", outputs={target: ""}, adapter_key=key)
    shards: list[OutShard] = []
    untied: list[tuple[str, str]] = []
    emitted: set[str] = set()
    for shard in base.shards:
        tensors: list[OutTensor] = []
        for info in shard.tensors:
            tensors.append(_out_tensor(info.name, info, shard, jobs, adapter, dtype))
            emitted.add(info.name)
            for extra in _untied_partners(info.name, base, skeleton, jobs, plan):
                jobs.setdefault(extra, _Job("cast", params={"weight": info.name}, outputs={extra: "weight"}))
                tensors.append(_out_tensor(extra, info, shard, jobs, adapter, dtype))
                emitted.add(extra)
                untied.append((extra, info.name))
        shards.append(OutShard(shard.path.name, tuple(tensors)))
    # modules_to_save tensors the base lacks (a task head it was saved without) go into the last shard.
    missing = [n for n, j in jobs.items() if n not in emitted and j.kind == "copy"]
    if missing:
        extra_tensors = tuple(_copy_tensor(n, jobs[n], adapter, None, dtype) for n in sorted(missing))
        shards[-1] = OutShard(shards[-1].name, shards[-1].tensors + extra_tensors)
    return tuple(shards), jobs, untied


def _out_tensor(name: str, info: Any, shard: P.BaseShard, jobs: dict[str, _Job], adapter: Adapter,
                dtype: str) -> OutTensor:
    code = _out_dtype(info.dtype, dtype)
    job = jobs.get(name)
    if job is None:
        if code == info.dtype:
            return OutTensor(name, code, info.shape, Raw(shard.path, shard.data_start + info.start,
                                                         info.end - info.start))
        jobs[name] = job = _Job("cast", params={"weight": name}, outputs={name: "weight"})
    if job.kind == "copy":
        return _copy_tensor(name, job, adapter, code, dtype)
    shape = info.shape
    saved = adapter.header.tensors.get(f"{P.PREFIX}{job.module}.base_layer.weight")
    if job.kind == "lora" and saved is not None and job.outputs.get(name) == "weight":
        shape = saved.shape  # an embedding saved whole (resized vocabulary) replaces the base's
    return OutTensor(name, code, shape, name)


def _copy_tensor(name: str, job: _Job, adapter: Adapter, code: Optional[str], dtype: str) -> OutTensor:
    info = adapter.header.tensors[job.adapter_key]
    # peft loads a modules_to_save copy into a clone of the base module: it takes the base's dtype.
    return OutTensor(name, code or _out_dtype(info.dtype, dtype), info.shape, name)


def _tied_source(base: P.BaseLayout, skeleton: Any, name: str) -> Optional[str]:
    for group in skeleton.tied:
        if name in group:
            present = [n for n in group if base.find(n) is not None]
            if present:
                return present[0]
    return None


def _untied_partners(name: str, base: P.BaseLayout, skeleton: Any, jobs: dict[str, _Job],
                     plan: P.AdapterPlan) -> list[str]:
    """Tied names the checkpoint does not hold, to be written because the adapter changes the group."""
    for group in skeleton.tied:
        if name not in group:
            continue
        missing = [n for n in group if base.find(n) is None]
        touched = any((n in jobs and jobs[n].kind != "cast") or n.rsplit(".", 1)[0] in plan.lora for n in group)
        return missing if touched else []
    return []


class _Producer:
    """Produces changed tensors on demand, in stream order; holds at most one job's results."""

    def __init__(self, base: P.BaseLayout, adapter: Adapter, skeleton: Any, jobs: dict[str, _Job],
                 shards: tuple[OutShard, ...], device: str, adapter_dir: Path, say: Progress) -> None:
        import torch

        self.base, self.skeleton, self.jobs, self.device, self.say = base, skeleton, jobs, device, say
        self.adapter_config, self.adapter_dir, self._peft_config = adapter.config or {}, adapter_dir, None
        torch.set_num_threads(os.cpu_count() or 1)  # matmuls use every core (torch's default: physical cores)
        try:  # an OSError here is a read failure, not one of the output's write failures
            self.adapter_tensors = _AdapterTensors(adapter_dir / P.SAFETENSORS_NAME, adapter.header.tensors)
        except OSError as exc:
            raise UnusableInput(f"{exc.filename or adapter_dir}: cannot read: {exc.strerror or exc}") from None
        self.pending: dict[str, Any] = {}
        self.reads: Optional[RunAhead] = None  # reads planned ahead, when the caller sets one up
        # Idle buffers kept for reuse: room for every stage of the pipeline (reads and results ahead, the
        # tensor being written, the product) at the largest size merged.
        largest = max((t.nbytes for s in shards for t in s.tensors if not isinstance(t.source, Raw)), default=0)
        self.pool = BufferPool(keep_bytes=4 * largest)
        self.lent: dict[str, Any] = {}  # output name -> its tensor, until the writer has written it
        self.merged = self.replaced = 0
        self.ignored: set[str] = set()

    def __call__(self, tensor: OutTensor) -> Any:
        import torch

        if tensor.name not in self.pending:
            self.pending.update(self._run(self.jobs[tensor.name], tensor))
        result = self.pending.pop(tensor.name)
        want = _torch_dtype(tensor.dtype)
        if result.dtype != want or tuple(result.shape) != tensor.shape:
            raise RuntimeError(f"{tensor.name}: produced {result.dtype} {tuple(result.shape)}, planned "
                               f"{want} {tensor.shape}")
        result = result.contiguous()
        data = result.reshape(-1).view(torch.uint8).numpy()
        if tensor.dtype in _FLOAT_VIEWS and not _all_finite(data, tensor.dtype):
            raise P.MergeRefused(f"merging produced NaN or infinite values in {tensor.name}: the adapter is "
                                 "broken or overflows in this dtype (try --dtype float32)")
        self.lent[tensor.name] = result
        return data

    def written(self, tensor: OutTensor) -> None:
        """The writer is done with `tensor`'s bytes: its buffer goes back to the pool."""
        result = self.lent.pop(tensor.name, None)
        if result is not None:
            self.pool.give(result)

    def _read(self, name: str, code: str) -> Any:
        return self.reads.get((name, code)) if self.reads is not None else self.read_now(name, code)

    def read_key(self, key: tuple[str, str]) -> Any:
        return self.read_now(*key)

    def read_now(self, name: str, code: str) -> Any:
        """Base tensor `name` in dtype `code`, read from its shard now (into a buffer of the pool)."""
        shard, info = self.base.find(name)  # type: ignore[misc]
        # Read straight into torch's memory: no zero-filled bytearray, and torch's allocator uses huge pages.
        raw = self.pool.take(info.end - info.start)
        read_exact(shard.path, shard.data_start + info.start, info.end - info.start, into=raw.numpy())
        value = raw.view(_torch_dtype(info.dtype)).reshape(info.shape)
        cast = value.to(_torch_dtype(code))
        if cast is not value:
            self.pool.give(raw)
        return cast

    def _run(self, job: _Job, tensor: OutTensor) -> dict[str, Any]:
        if job.kind == "copy":
            self.replaced += 1
            return {tensor.name: self.adapter_tensors.get(job.adapter_key).to(_torch_dtype(tensor.dtype))}
        if job.kind == "cast":
            return {tensor.name: self._read(job.params["weight"], tensor.dtype)}
        self.say(f"merging {job.module}")
        read = {p: self._read(n, tensor.dtype) for p, n in job.params.items()}
        params, saved = P.module_inputs(job.module, read, self.adapter_tensors.under(f"{P.PREFIX}{job.module}."))
        produced = self._merged(job, params, saved)
        kept = {value.untyped_storage().data_ptr() for value in produced.values()}
        for value in read.values():  # inputs that are not outputs: nothing reads them any more
            if value.untyped_storage().data_ptr() not in kept:
                self.pool.give(value)
        return produced

    def _merged(self, job: _Job, params: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
        fast = self._plain(job.module, saved, params)
        if fast is not None:
            self.merged += 0 if job.module in self.ignored else len(job.outputs)
            return {out: fast[param] for out, param in job.outputs.items()}
        from peftdoctor.merge.layer import merge_module, peft_config

        try:
            if self._peft_config is None:
                self._peft_config = peft_config(self.adapter_dir)
            merged = merge_module(self.skeleton, self._peft_config, job.module, params, saved, self.device)
        except ValueError as exc:
            if "not found in the base model" in str(exc) or "Target modules" in str(exc):
                self.ignored.add(job.module)
                merged = params
            else:
                raise P.MergeRefused(f"peft cannot merge {job.module}: {message_line(str(exc))}") from None
        except RuntimeError as exc:
            raise P.MergeRefused(f"peft cannot merge {job.module}: {message_line(str(exc))}") from None
        else:
            self.merged += len(job.outputs)
        return {out: merged[param] for out, param in job.outputs.items()}

    def _plain(self, module: str, saved: dict[str, Any], params: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The module merged by merge/delta.py (torch alone), or None where peft's layer code must do it."""
        config = self.adapter_config
        try:
            if not (targeting.names_all_linear(config.get("target_modules"))  # the weights say which, as in layer.py
                    or targeting.targeted(config, module, _peft_version())):
                self.ignored.add(module)
                return params
        except (*targeting.PROBLEMS, LookupError):
            return None
        tensors = {k[len(P.PREFIX) + len(module) + 1:]: v for k, v in saved.items()}
        weight = params["weight"]
        lora = D.plain(config, module, tensors, weight, D.layer_kind(self.skeleton.model, config, module, tensors))
        if isinstance(lora, str):
            return None
        if self.device != "cpu":
            weight = weight.to(self.device)
            lora = D.PlainLora(lora.kind, lora.A.to(self.device), lora.B.to(self.device), lora.scaling)
        merged = D.merge_into(weight, lora, self.pool).to("cpu")
        return {**params, "weight": merged}


def _reads(jobs: dict[str, _Job], changed: list[OutTensor]) -> list[tuple[str, str]]:
    """The base tensors the producer reads, in the order it reads them: (name, dtype code)."""
    seen: set[int] = set()
    keys: list[tuple[str, str]] = []
    for tensor in changed:
        job = jobs[tensor.name]
        if id(job) not in seen and job.kind != "copy":
            seen.add(id(job))
            keys.extend((name, tensor.dtype) for name in job.params.values())
    return keys


def _peft_version() -> Any:
    """The installed peft's version, from its metadata (importing peft would cost seconds)."""
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("peft").split("@")[0])


class _AdapterTensors:
    """The adapter's saved tensors, each read from its own byte range when a module asks for it:
    never the whole file (a 100 GB adapter ended in MemoryError; safe_open maps the whole file, which
    fails the same way), and a tensor larger than the memory available is refused in one line
    before a byte of it is read."""

    def __init__(self, path: Path, infos: dict[str, Any]) -> None:
        header = read_header(str(path))  # validated by the plan already: only the data's offset is new
        self.path, self.infos, self.data_start = path, infos, header.file_size - header.data_size

    def get(self, key: str) -> Any:
        import torch

        info = self.infos[key]
        needed, available = expected_nbytes(info), memory_available()
        if available is not None and needed > available:
            raise P.MergeRefused(f"adapter tensor {key} takes {needed:,} bytes, more than the {available:,} bytes "
                                 "of memory available: not read")
        if info.dtype not in _TORCH_DTYPES:
            raise P.MergeRefused(f"adapter tensor {key} is {info.dtype}, a dtype merge does not read")
        try:
            buffer = read_exact(self.path, self.data_start + info.start, info.end - info.start)
        except MemoryError:
            raise P.MergeRefused(f"adapter tensor {key} ({needed:,} bytes) does not fit in memory") from None
        if not buffer:
            return torch.empty(info.shape, dtype=_torch_dtype(info.dtype))
        return torch.frombuffer(buffer, dtype=_torch_dtype(info.dtype)).reshape(info.shape)

    def under(self, prefix: str) -> dict[str, Any]:
        return {key: self.get(key) for key in self.infos if key.startswith(prefix)}


# How numpy sees each float dtype's bytes: bfloat16, which numpy lacks, as its raw 16 bits.
_FLOAT_VIEWS = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "uint16"}
_BF16_EXPONENT = 0x7F80


def _all_finite(data: Any, code: str) -> bool:
    """No NaN or infinity in the bytes `data` of a `code` tensor. numpy's isfinite is used rather than
    torch's because it is several times faster on one large tensor (no thread pool, no dispatch); a
    bfloat16 is NaN or infinite exactly when all 8 of its exponent bits are set."""
    import numpy

    values = data.view(_FLOAT_VIEWS[code])
    if code == "BF16":
        return not bool(((values & _BF16_EXPONENT) == _BF16_EXPONENT).any())
    return bool(numpy.isfinite(values).all())


_TORCH_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


def _torch_dtype(code: str) -> Any:
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}[code]


def _copy_side_files(base: P.BaseLayout, adapter_dir: Path, staging: Path, dtype: str, untied: bool) -> None:
    """config.json (untied and re-typed when needed), generation config, and the tokenizer: the
    adapter's own when it ships one (it may carry added tokens), else the base's."""
    config = json.loads(json.dumps(base.config))
    if untied:
        config["tie_word_embeddings"] = False
        for sub in config.values():
            if isinstance(sub, dict) and "tie_word_embeddings" in sub:
                sub["tie_word_embeddings"] = False
    if dtype != "auto":
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
    write_json(staging / "config.json", config)
    if (base.directory / "generation_config.json").is_file():
        copy_inside(base.directory / "generation_config.json", staging / "generation_config.json")
    source = tokenizer_source((adapter_dir, base.directory))
    for path in tokenizer_files(source) if source is not None else ():
        copy_inside(path, staging / path.name)
