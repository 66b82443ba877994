"""The in-memory half of a checkpoint: a copy of the training state that training cannot change.

`snapshot` copies a state at once. `Snapshotter` is the pipeline behind
`CheckpointStore.save_async`: it copies what changes in the forward pass while the loop waits,
leaves the *stable* tensors (parameters, optimizer state, EMA weights: only the optimizer step
changes them) to the writer thread, and reuses the buffers of the previous written snapshot.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

# torch.save adds zip headers, a pickle of the structure and 64-byte alignment per tensor.
_OVERHEAD_PER_TENSOR = 1024
_OVERHEAD_FIXED = 1 << 20

# CPU dtypes that numpy can copy (see _copy_tensor)
_NUMPY_DTYPES = {torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
                 torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool}


def snapshot(state: Any) -> Any:
    """Detached in-memory copy of ``state``, safe to write while training mutates the original.

    Tensors are detached and copied with their strides (a tensor that appears twice, e.g. tied
    weights, stays one tensor in the copy); dicts, lists and tuples are rebuilt around the copies;
    anything else is deep-copied. Distinct views of one storage become independent tensors.
    """
    return _copy(state, {})


def _numpy_copyable(t: torch.Tensor) -> bool:
    return (t.is_cpu and t.layout == torch.strided and t.dtype in _NUMPY_DTYPES
            and not t.is_conj() and not t.is_neg())


def _copy_tensor(t: torch.Tensor, into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A detached copy of ``t``, made with a plain single-threaded memcpy where possible, into
    ``into`` when that buffer has the same shape, dtype and strides.

    ``Tensor.clone`` runs an OpenMP parallel region per tensor; on a busy small box (training
    threads, other processes) those regions stall: tf_efficientnetv2_s + AdamW (232 MiB, ~1500
    tensors) took 0.6-1.5 s to clone on a loaded 2-core machine against 0.04-0.06 s through numpy.
    Copying into a reused buffer also skips the page faults of fresh memory.

    A tensor on a GPU is copied to host memory (a checkpoint holds CPU tensors only, whichever
    device trained it; loading moves them back); the copy waits for the GPU's queued work.
    """
    t = t.detach()
    if _numpy_copyable(t):
        if _fits(into, t):
            np.copyto(into.numpy(), t.numpy())
            return into
        return torch.from_numpy(t.numpy().copy(order="K"))  # order K keeps e.g. channels_last
    if not t.is_cpu:
        if _fits(into, t) and into.is_cpu:
            return into.copy_(t)
        return t.to("cpu", copy=True)  # preserve_format: strides of a dense tensor kept
    return t.clone()


def on_cpu(state: dict) -> dict:
    """A state dict whose tensors are on the CPU: the same tensors when they are already there
    (no copy), host copies of GPU ones (best.pt written from a model on CUDA)."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _fits(buffer: Optional[torch.Tensor], t: torch.Tensor) -> bool:
    return (buffer is not None and buffer.shape == t.shape and buffer.dtype == t.dtype
            and buffer.stride() == t.stride())


def _dense(t: torch.Tensor) -> bool:
    """True if ``t`` covers its memory without gaps or overlaps in a layout numpy can mirror."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


class _DeferredCopies:
    """Copies of *stable* tensors that the writer thread makes after the loop has moved on.

    Training only changes parameters, optimizer state and EMA weights in the optimizer step (and
    the EMA update after it), so those need not be copied while the loop waits: the snapshot gets
    an empty buffer for each, the writer thread fills the buffers while the next step's forward and
    backward run, and the loop calls ``CheckpointStore.fence()`` before its next optimizer step.
    This is CheckFreq's snapshot pipelining (Mohan et al., FAST '21). Stable tensors are matched
    by data pointer, because ``state_dict()`` hands out detached aliases, not the parameters.
    """

    def __init__(self, stable: Iterable[torch.Tensor]):
        self.stable = {t.data_ptr() for t in stable}
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def take(self, t: torch.Tensor, into: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """A buffer to be filled later with ``t``, or None if ``t`` must be copied now."""
        # cheapest test first: this runs for every tensor of the state while the loop waits
        if t.data_ptr() not in self.stable or not _numpy_copyable(t) or not _dense(t):
            return None
        t = t.detach()
        if not _fits(into, t):
            into = torch.from_numpy(np.empty_like(t.numpy(), order="K"))
        self.pairs.append((t, into))
        return into

    def run(self) -> None:
        try:
            for source, target in self.pairs:
                np.copyto(target.numpy(), source.numpy())
        except BaseException as e:  # surfaces as a failed checkpoint; the fence must still open
            self.error = e
        finally:
            self.pairs = []  # drop the references to live tensors
            self.done.set()


def _copy(obj: Any, memo: dict, reuse: Optional[Iterator[torch.Tensor]] = None,
          later: Optional[_DeferredCopies] = None) -> Any:
    if isinstance(obj, torch.Tensor):
        key = id(obj)
        if key not in memo:
            into = next(reuse, None) if reuse is not None else None
            deferred = later.take(obj, into) if later is not None else None
            memo[key] = deferred if deferred is not None else _copy_tensor(obj, into)
        return memo[key]
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps dict subclasses (OrderedDict, defaultdict) as they are
        for k, v in obj.items():
            out[k] = _copy(v, memo, reuse, later)
        return out
    if isinstance(obj, list):
        return [_copy(v, memo, reuse, later) for v in obj]
    if isinstance(obj, tuple):
        items = [_copy(v, memo, reuse, later) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return copy.deepcopy(obj, memo)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj`` (dicts, lists and tuples), in the order ``_copy`` meets them."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _tensors_in_order(obj: Any) -> list[torch.Tensor]:
    """The distinct tensors of ``obj`` in the order ``_copy`` meets them."""
    return list({id(t): t for t in _tensors(obj)}.values())


def estimate_bytes(state: Any) -> int:
    """Rough size of ``torch.save(state)``: tensor storages plus a fixed allowance per tensor."""
    storages: dict[tuple[int, int], int] = {}
    n_tensors = 0
    for tensor in _tensors(state):
        n_tensors += 1
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    return sum(storages.values()) + n_tensors * _OVERHEAD_PER_TENSOR + _OVERHEAD_FIXED


class Snapshotter:
    """The snapshots of background checkpoints, one in flight at a time.

    ``take`` copies a state, deferring its stable tensors to ``later.run()`` (the writer thread);
    ``fence`` is what the loop calls before it modifies a stable tensor; ``written`` hands the
    buffers of a snapshot that is on disk to the next ``take``.
    """

    def __init__(self) -> None:
        self._in_flight: Optional[_DeferredCopies] = None  # deferred copies of the write in flight
        self._spare: Optional[list[torch.Tensor]] = None  # buffers of the last written snapshot

    def take(self, state: Any, stable: Iterable[torch.Tensor]) -> tuple[Any, "_DeferredCopies"]:
        """A snapshot of ``state`` whose tensors sharing memory with ``stable`` are still empty
        buffers, and the deferred copies that fill them."""
        later = _DeferredCopies(stable)
        spare, self._spare = self._spare, None
        snap = _copy(state, {}, iter(spare) if spare else None, later)
        self._in_flight = later
        return snap, later

    def fence(self) -> float:
        """Block until the deferred copies of the snapshot in flight are made; the seconds waited."""
        later = self._in_flight
        if later is None or later.done.is_set():
            return 0.0
        started = time.perf_counter()
        later.done.wait()
        return time.perf_counter() - started

    def written(self, snap: Any) -> None:
        """``snap`` went to disk (or failed to): the next snapshot may copy into its buffers."""
        self._spare = _tensors_in_order(snap)

    def settled(self) -> None:
        """The write in flight is over."""
        self._in_flight = None
