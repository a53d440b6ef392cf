"""Capture backends: how a function of static tensors becomes a graph that replays its device work.

The graph executor (:mod:`ltc.executor.graph`) hands a backend a Python function ``fn`` that reads and
writes only tensors allocated before the capture (plus temporaries it makes itself).  One small
protocol, two implementations:

    backend.supports(device) -> bool
    backend.warmup(fn, device)                         # run fn eagerly once, before any capture
    backend.new_pool(device) -> pool                   # a memory pool for the graphs of one walk
    backend.before_capture(device)                     # free cached memory for the capture
    backend.capture(fn, device, generators, pool=pool) -> graph   # graph.replay() repeats fn's device work

* :class:`CudaGraphs` -- ``torch.cuda.CUDAGraph``.  Warm-up and capture run on one side stream
  per device; the graphs of one captured walk share one memory pool, and no two walks share a
  pool, so walks replayed from different threads or streams never share temporaries; replay
  runs on the current stream.  Before capturing, the warm-up's cached blocks are returned to the
  device (``gc.collect(); torch.cuda.empty_cache()``, as ``torch.cuda.graph`` does) so the
  capture's private pool can use them.  Random number generators used by ``fn`` are registered
  with the graph, so each replay draws fresh numbers and advances them.  A capture that fails
  (a host synchronisation in the model, say) leaves neither the allocator nor the generators in
  capture mode: eager sampling -- noise included -- works right after it.
* :class:`RecordedGraphs` -- a CPU emulation, for tests and for checking a model on a machine
  without a GPU.  Capture executes ``fn`` once under a dispatch mode that records every aten
  operation with its arguments: tensors made during the capture by reference, every other
  tensor (static buffers, weights) by identity, and non-tensor arguments as constants.  Replay
  re-executes the recorded operations.  So, as with a CUDA graph, a replay repeats the Python
  decisions taken at capture time, reads the *current* contents of the static tensors, and an
  operation that synchronises with the host during capture (``.item()``, ``bool(t)``,
  ``nonzero``) is an error.  It sees aten operations only, so it accepts only the
  ``reference`` step ops (``ops_backends``): a Triton or CUDA-extension kernel would not be recorded.

Failures are reported as :class:`GraphCaptureError` with a sentence naming the cause.
"""
from __future__ import annotations

import gc
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten


class GraphCaptureError(RuntimeError):
    """The sampling loop could not be captured into a graph (the message names the cause)."""


class GraphTooLargeError(GraphCaptureError):
    """The capture ran out of device memory (a smaller graph, e.g. per step, may still fit)."""


HOST_SYNC_HINT = ("something in the captured loop synchronises with the host or copies between host and "
                  "device (.item(), float(t), bool(t), if on a tensor, print, .cpu(), .tolist(), nonzero / "
                  "boolean-mask indexing, a data-dependent shape, a CPU tensor moved to the GPU such as CPU "
                  "labels in model_kwargs); a CUDA graph can only hold device work")


def explain(err: BaseException, where: str) -> str:
    """One sentence naming why capturing ``where`` failed, with the original message."""
    text = f"{type(err).__name__}: {err}".strip()
    low = str(err).lower()
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in low:
        cause = "the device ran out of memory while capturing"
    elif "capturing" in low or "capture" in low or "host synchronisation" in low:
        cause = HOST_SYNC_HINT
    else:
        cause = "an operation failed during capture"
    first_line = text.splitlines()[0] if text else type(err).__name__
    return f"capturing {where} failed: {cause} [{first_line}]"


# -- CUDA ------------------------------------------------------------------------------------

class CudaGraphs:
    """Capture with ``torch.cuda.CUDAGraph`` (see the module docstring)."""

    name = "cuda"

    def __init__(self):
        self._streams: dict[int, torch.cuda.Stream] = {}

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda" and torch.cuda.is_available()

    def _index(self, device: torch.device) -> int:
        return device.index if device.index is not None else torch.cuda.current_device()

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        idx = self._index(device)
        if idx not in self._streams:
            self._streams[idx] = torch.cuda.Stream(device=idx)
        return self._streams[idx]

    def new_pool(self, device: torch.device):
        """A fresh memory pool (the graphs of one walk share it; walks never do)."""
        with torch.cuda.device(device):
            return torch.cuda.graph_pool_handle()

    def warmup(self, fn, device: torch.device) -> None:
        stream, current = self._stream(device), torch.cuda.current_stream(device)
        stream.wait_stream(current)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            fn()
        current.wait_stream(stream)
        torch.cuda.synchronize(device)

    def before_capture(self, device: torch.device) -> None:
        """Return cached blocks to the device so the capture's private pool can take them."""
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()

    def capture(self, fn, device: torch.device, generators=(), *, pool=None):
        graph, stream = torch.cuda.CUDAGraph(), self._stream(device)
        pool = self.new_pool(device) if pool is None else pool
        torch.cuda.synchronize(device)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            if registers_generators():
                for gen in generators:
                    graph.register_generator_state(gen)
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                fn()
            except BaseException:
                self._abort(graph, device, pool, generators)
                raise
            graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(stream)
        return graph

    def _abort(self, graph, device: torch.device, pool, generators) -> None:
        """Leave capture mode after ``fn`` raised.  ``capture_end`` fails on an invalidated capture
        before it stops routing allocations to the pool (the next capture into that pool would
        fail: "already recording to mempool_id") and before it runs the generators' capture
        epilogue (the next eager ``torch.randn`` on the device would fail: "Offset increment
        outside graph capture"): end the routing here, release the graph, and let an empty
        capture that ends cleanly run the epilogue of the same generators."""
        idx = self._index(device)
        try:
            graph.capture_end()
        except Exception:
            try:
                torch._C._cuda_endAllocateToPool(idx, pool)
            except Exception:
                pass
        try:
            graph.reset()
        except Exception:
            pass
        self._release_generators(device, generators)

    def _release_generators(self, device: torch.device, generators) -> None:
        """Run the capture epilogue of the device's default generator and of ``generators`` by
        capturing (and dropping) an empty graph on a fresh pool."""
        empty = torch.cuda.CUDAGraph()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the CUDA Graph is empty": it is meant to be
            with torch.cuda.device(device), torch.cuda.stream(self._stream(device)):
                if registers_generators():
                    for gen in generators:
                        empty.register_generator_state(gen)
                empty.capture_begin(pool=self.new_pool(device))
                empty.capture_end()
        empty.reset()


def registers_generators() -> bool:
    """Whether this torch can register custom CUDA generators with a graph (torch >= 2.5)."""
    return hasattr(torch.cuda.CUDAGraph, "register_generator_state")


# -- CPU emulation ---------------------------------------------------------------------------

HOST_SYNC_OPS = (aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
                 aten.nonzero.default, aten.masked_select.default)


class _Slot:
    """A tensor produced during the capture: the ``index``-th result slot of a replay."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class _Static:
    """A tensor that existed before the capture; replays use the same tensor object."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class _Recorder(TorchDispatchMode):
    def __init__(self, max_ops: int | None):
        super().__init__()
        self.ops: list = []
        self.max_ops = max_ops
        self._slots: dict[int, int] = {}
        self._alive: list[torch.Tensor] = []  # keeps captured tensors alive so ids stay unique

    def _ref(self, value):
        if isinstance(value, torch.Tensor):
            index = self._slots.get(id(value))
            return _Slot(index) if index is not None else _Static(value)
        return value

    def _register(self, value, inputs):
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) in self._slots:
            return _Slot(self._slots[id(value)])
        if any(value is t for t in inputs):  # an in-place op returning a static input
            return _Static(value)
        self._slots[id(value)] = len(self._alive)
        self._alive.append(value)
        return _Slot(self._slots[id(value)])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_SYNC_OPS:
            raise GraphCaptureError(f"host synchronisation during capture ({func}): {HOST_SYNC_HINT}")
        if self.max_ops is not None and len(self.ops) >= self.max_ops:
            raise torch.OutOfMemoryError(f"recorded graph exceeds max_ops={self.max_ops} operations")
        spec = tree_map(self._ref, (args, kwargs))
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        self.ops.append((func, spec, tree_map(lambda v: self._register(v, inputs), out)))
        return out


class RecordedGraph:
    """The replayable result of :meth:`RecordedGraphs.capture`."""

    def __init__(self, ops: list, n_slots: int):
        self.ops, self.n_slots, self.replays = ops, n_slots, 0

    def replay(self) -> None:
        env: list = [None] * self.n_slots

        def resolve(v):
            if isinstance(v, _Slot):
                return env[v.index]
            return v.tensor if isinstance(v, _Static) else v

        for func, spec, out_spec in self.ops:
            args, kwargs = tree_map(resolve, spec)
            out = func(*args, **kwargs)
            for value, where in zip(tree_flatten(out)[0], tree_flatten(out_spec)[0]):
                if isinstance(where, _Slot):
                    env[where.index] = value
        self.replays += 1


class RecordedGraphs:
    """CPU emulation of graph capture (see the module docstring).

    ``max_ops``: capturing more operations than this raises ``torch.OutOfMemoryError``, standing
    in for a graph too large for the device.  ``devices``: device types it accepts.
    ``captures`` / ``warmups`` / ``prepared`` count calls and ``pools`` holds the pool of each capture
    (for tests).
    """

    name = "recorded"
    ops_backends = ("reference",)  # kernels launched outside aten (Triton, the CUDA extension) are invisible to it

    def __init__(self, max_ops: int | None = None, devices=("cpu",)):
        self.max_ops, self.devices = max_ops, tuple(devices)
        self.captures = self.warmups = self.prepared = 0
        self.pools: list = []

    def supports(self, device: torch.device) -> bool:
        return device.type in self.devices

    def warmup(self, fn, device: torch.device) -> None:
        self.warmups += 1
        fn()

    def new_pool(self, device: torch.device) -> object:
        """A token standing in for a memory pool (``pools`` lists the pool of every capture)."""
        return object()

    def before_capture(self, device: torch.device) -> None:
        self.prepared += 1

    def capture(self, fn, device: torch.device, generators=(), *, pool=None) -> RecordedGraph:
        recorder = _Recorder(self.max_ops)
        with recorder:
            fn()
        self.captures += 1
        self.pools.append(pool)
        return RecordedGraph(recorder.ops, len(recorder._alive))
