"""The graph executor: the plan walk captured once, then replayed -- whole trajectory or per step.

A compiled plan fixes every decision before sampling (which model runs at step i, whether step
i is extrapolated, how many past estimates it reads, whether it draws noise), so the walk of
:func:`ltc.executor.run_eager` is a fixed sequence of device operations on fixed buffers:

* ``whole`` -- the complete walk, N steps with Python-int step indices, is one graph.  Sampling
  is: copy the noise (and the tensor ``model_kwargs``) into static buffers, one replay, copy
  the samples out.
* ``step`` -- one graph per step signature ``(model or extrapolation, reads, noisy, i % 2,
  i % 3)``, replayed N times in plan order.  The step index lives in a device int64 scalar
  ``step_t`` that every graph increments at its end; a graph gathers its model time
  ``timesteps[step_t]`` and coefficient row on the device.  ``i % 2`` fixes which state buffer
  is read and written; ``i % 3`` fixes the history slots: the step ops get the Python int
  ``i % 3`` and a ``[3, NCOLS]`` table whose rows all hold row ``step_t``, so they touch the
  slots of step i and need no device index.

Static buffers of a captured walk: the state ``xs[2]`` ``[B, *S]`` (step i reads ``xs[i % 2]``,
writes ``xs[(i + 1) % 2]``), the history ``hist [3, B, *S]``, ``first_bad`` (0-d int64: the
first step whose model output was not finite, -1 if none -- the one value copied to the host,
once, after the replay; as ``check_finite="end"``), and copies of the tensor ``model_kwargs``.

Before capture every distinct step runs once eagerly on the capture side stream (lazy
initialisation, cuBLAS / Triton autotuning and ``torch.compile`` compilation happen there).  The
state of the random generator is saved before the warm-up and restored after the capture, so
samples equal those of the eager executor from the same generator state.

Captured walks are cached (:mod:`ltc.graph_cache`); :func:`clear_cache` frees them.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from .executor import NonFiniteError, advance, compute_dtype, run_eager
from .graph_cache import GraphCache, identify, kwargs_signature
from .graph_capture import (CudaGraphs, GraphCaptureError, GraphTooLargeError, RecordedGraphs,
                            explain, registers_generators)
from .models import check_output
from .plan import EXTRAPOLATE, HISTORY_SLOTS

OPTIONS = ("auto", True, False, "whole", "step")
EXECUTORS = ("eager", "graph-whole", "graph-step")

__all__ = ["run", "check_option", "clear_cache", "cache_size", "use_backend", "GraphCaptureError",
           "GraphTooLargeError", "GraphFallbackWarning", "RecordedGraphs", "CudaGraphs", "OPTIONS"]


class GraphFallbackWarning(UserWarning):
    """``graph="auto"`` could not capture the walk and sampled eagerly (the message says why)."""


_backend = CudaGraphs()
_cache = GraphCache(capacity=8)


def clear_cache() -> None:
    """Free every captured walk (graphs, static buffers) and every remembered capture failure."""
    _cache.clear()


def cache_size() -> int:
    """Number of cached captured walks (and remembered failures)."""
    return len(_cache)


@contextlib.contextmanager
def use_backend(backend):
    """Use another capture backend inside the block, e.g. ``RecordedGraphs()`` to exercise graph
    mode on the CPU (see :mod:`ltc.graph_capture`)."""
    global _backend
    previous, _backend = _backend, backend
    try:
        yield backend
    finally:
        _backend = previous


def _is_option(graph) -> bool:
    return graph is True or graph is False or (isinstance(graph, str) and graph in OPTIONS)


def check_option(graph, device, callback=None, check_finite: str = "auto") -> str | None:
    """Validate ``graph`` for a run on ``device``; returns why the run will be eager (None when
    graphs will be tried).  Raises ValueError when graphs are demanded but cannot be used."""
    if not _is_option(graph):
        raise ValueError(f"graph must be one of {OPTIONS}, got {graph!r}")
    if graph is False:
        return "graph=False"
    device = torch.device(device)
    if not _backend.supports(device):
        reason = f"no graph capture for {device.type} tensors (CUDA graphs need a CUDA device)"
    elif callback is not None:
        reason = ("a callback runs Python after every step, which a captured walk cannot do "
                  "(use graph=False, or no callback)")
    elif check_finite == "step":
        reason = "check_finite='step' copies a check to the host after every model call; use 'end' with graphs"
    else:
        return None
    if graph != "auto":
        raise ValueError(f"graph={graph!r} is not possible: {reason}")
    return reason


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device
    return (a.index if a.index is not None else current()) == (b.index if b.index is not None else current())


def graph_generator(plan, device: torch.device, generator, can_register: bool | None = None):
    """The generator a captured walk draws its noise from (None for a plan without noise);
    raises GraphCaptureError when it cannot be used inside a graph."""
    if not any(plan.noisy):
        return None
    gen = generator if generator is not None else _default_generator(device)
    if not _same_device(gen.device, device):
        raise GraphCaptureError(
            f"the sampler draws noise from a generator on {gen.device} for a state on {device}; a graph "
            f"cannot call a host generator: pass torch.Generator(device='{device.type}')")
    can_register = registers_generators() if can_register is None else can_register
    if device.type == "cuda" and not can_register and gen is not _default_generator(device):
        raise GraphCaptureError(
            f"torch {torch.__version__} cannot register a custom CUDA generator with a graph "
            "(torch >= 2.5 can); use the default CUDA generator (generator=None) or graph=False")
    return gen


class _AtIndex:
    """The step ops with their step argument replaced by ``index`` (per-step graphs: ``i % 3``
    into a ``[3, NCOLS]`` table whose rows all hold the current step's row)."""

    def __init__(self, ops, index: int):
        self.ops, self.index = ops, index

    def model_step(self, x, model_out, hist, coefs, step, out, **kw):
        self.ops.model_step(x, model_out, hist, coefs, self.index, out, **kw)

    def extrapolate_step(self, x, x_prev, hist, coefs, step, out, **kw):
        self.ops.extrapolate_step(x, x_prev, hist, coefs, self.index, out, **kw)


class _Walk:
    """The static buffers of one captured walk and the step function run at warm-up and capture."""

    def __init__(self, plan, models, noise, ops, kwargs, generator, check: bool):
        device, dtype = noise.device, noise.dtype
        self.plan, self.models, self.ops, self.generator = plan, models, ops, generator
        self.coefs = plan.coefficients(compute_dtype(dtype), device)
        self.timesteps = plan.timesteps(torch.float64 if dtype == torch.float64 else torch.float32, device)
        self.xs = [torch.zeros_like(noise), torch.zeros_like(noise)]
        self.hist = torch.zeros((HISTORY_SLOTS, *noise.shape), dtype=dtype, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device) if check else None
        self.step_ids = torch.arange(plan.steps, dtype=torch.long, device=device)
        self.step_t = torch.zeros((), dtype=torch.long, device=device)
        self.kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        self.batch = noise.shape[0] * (2 if plan.cfg else 1)
        self.where = None  # what is being captured, for error messages

    def load(self, noise, kwargs) -> None:
        """Copy the inputs of one run into the static buffers (device copies, no host sync)."""
        self.xs[0].copy_(noise)
        for name, value in self.kwargs.items():
            if isinstance(value, torch.Tensor):
                value.copy_(kwargs[name])
        if self.first_bad is not None:
            self.first_bad.fill_(-1)
        self.step_t.zero_()

    def signature(self, i: int) -> tuple:
        plan = self.plan
        return plan.models[i], plan.history_reads[i], plan.noisy[i], i % 2, i % HISTORY_SLOTS

    def step(self, i: int, ops, coefs, t, step_id) -> None:
        """Step ``i`` of the plan: the model call (model time ``t``), the finite check and
        :func:`ltc.executor.advance` with step ops ``ops`` on coefficient table ``coefs``."""
        x, out = self.xs[i % 2], self.xs[(i + 1) % 2]
        k, pred = self.plan.models[i], None
        if k != EXTRAPOLATE:
            model = self.models[k]
            self.where = f"model {model.name!r} at step {i}"
            inp = torch.cat([x, x]) if self.plan.cfg else x
            pred = model(inp, t.expand(self.batch), **self.kwargs)
            check_output(pred, inp, i, model)
            if self.first_bad is not None:
                bad = (self.first_bad < 0) & ~torch.isfinite(pred).all()
                self.first_bad.copy_(torch.where(bad, step_id, self.first_bad))
        self.where = f"the step operation of step {i}"
        advance(self.plan, i, x, out, self.hist, coefs, ops, pred, self.generator)

    def whole(self) -> None:
        for i in range(self.plan.steps):
            self.step(i, self.ops, self.coefs, self.timesteps[i], self.step_ids[i])

    def one_step(self, i: int):
        """The per-step graph body of step ``i``'s signature (reads the step index from step_t)."""
        ops = _AtIndex(self.ops, i % HISTORY_SLOTS)

        def body():
            rows = self.coefs.index_select(0, self.step_t.expand(HISTORY_SLOTS))
            t = self.timesteps.index_select(0, self.step_t.reshape(1))
            self.step(i, ops, rows, t, self.step_t)
            self.step_t.add_(1)
        return body

    def warm(self, mode: str) -> None:
        """Run each distinct step (model, reads, noise) once, eagerly."""
        seen = set()
        for i in range(self.plan.steps):
            kind = self.signature(i)[:3]
            if kind in seen:
                continue
            seen.add(kind)
            if mode == "whole":
                self.step(i, self.ops, self.coefs, self.timesteps[i], self.step_ids[i])
            else:
                self.step_t.fill_(i)
                self.one_step(i)()


class _Captured:
    """A captured walk: its buffers and the graph replayed at each step (one graph, or one per signature)."""

    def __init__(self, walk: _Walk, sequence: list, n_graphs: int):
        self.walk, self.sequence, self.n_graphs = walk, sequence, n_graphs

    @classmethod
    def capture(cls, mode, plan, models, noise, ops, kwargs, generator, check, backend) -> "_Captured":
        walk = _Walk(plan, models, noise, ops, kwargs, generator, check)
        device, gens = noise.device, [generator] if generator is not None else []
        saved = [g.get_state() for g in gens]

        def restore():
            for g, state in zip(gens, saved):
                g.set_state(state)

        def capture_one(body, what):
            walk.where = None
            try:
                return backend.capture(body, device, gens)
            except Exception as err:
                kind = GraphTooLargeError if isinstance(err, torch.OutOfMemoryError) else GraphCaptureError
                raise kind(explain(err, walk.where or what)) from err

        with torch.no_grad():
            walk.load(noise, kwargs)
            backend.warmup(lambda: walk.warm(mode), device)
            restore()
            if mode == "whole":
                graph = capture_one(walk.whole, "the whole walk")
                restore()
                return cls(walk, [graph], 1)
            graphs = {}
            for i in range(plan.steps):
                if walk.signature(i) not in graphs:
                    walk.step_t.fill_(i)  # a valid index for backends that execute while capturing
                    graphs[walk.signature(i)] = capture_one(walk.one_step(i), f"step {i}")
            restore()
            return cls(walk, [graphs[walk.signature(i)] for i in range(plan.steps)], len(graphs))

    def __call__(self, noise, kwargs) -> torch.Tensor:
        walk = self.walk
        walk.load(noise, kwargs)
        for graph in self.sequence:
            graph.replay()
        if walk.first_bad is not None:
            bad_step = int(walk.first_bad)  # the one device->host copy, after the replay
            if bad_step >= 0:
                model = walk.models[walk.plan.models[bad_step]]
                raise NonFiniteError(f"model {model.name!r} returned NaN or Inf at step {bad_step}")
        return walk.xs[walk.plan.steps % 2].clone()


def _sample(mode, plan, models, noise, ops, ops_name, kwargs, generator, check) -> torch.Tensor:
    backend = _backend
    gen = graph_generator(plan, noise.device, generator)
    key = (plan.fingerprint, mode, tuple(noise.shape), str(noise.dtype), str(noise.device), ops_name, check,
           kwargs_signature(kwargs), backend.name, id(backend))
    identity = identify([m.fn for m in models], gen)
    captured = _cache.get(key, identity)
    if isinstance(captured, tuple):  # a remembered failure (class, message): do not capture again
        raise captured[0](captured[1])
    if captured is None:
        try:
            captured = _Captured.capture(mode, plan, models, noise, ops, kwargs, gen, check, backend)
        except GraphCaptureError as err:
            _cache.put(key, identity, (type(err), str(err)))
            raise
        _cache.put(key, identity, captured)
    return captured(noise, kwargs)


def run(plan, models, noise, *, graph="auto", ops, ops_name: str, model_kwargs=None, generator=None,
        callback=None, progress: bool = False, check_finite: str = "auto"):
    """Sample along ``plan`` from ``noise`` with graphs when ``graph`` allows, else eagerly.

    Returns ``(samples, executor, note)``: executor is one of EXECUTORS, note says why graphs
    were not used (or None).  ``graph="auto"`` tries the whole walk, then per-step graphs when
    the whole capture runs out of memory, and samples eagerly with a GraphFallbackWarning when
    capture fails; ``True`` does the same but raises GraphCaptureError instead of falling back;
    ``"whole"`` / ``"step"`` demand that mode.
    """
    kwargs = model_kwargs or {}
    note = check_option(graph, noise.device, callback, check_finite)
    if note is None:
        check = check_finite != "off"
        modes = ("whole", "step") if graph in ("auto", True) else (graph,)
        errors, last = [], None
        for mode in modes:
            try:
                x = _sample(mode, plan, models, noise, ops, ops_name, kwargs, generator, check)
                return x, f"graph-{mode}", "; ".join(errors) or None
            except GraphCaptureError as err:
                errors.append(str(err))
                last = err
                if not isinstance(err, GraphTooLargeError):
                    break
        note = "; ".join(errors)
        if graph != "auto":
            raise type(last)(note) from last
        warnings.warn(f"graph='auto' samples eagerly: {note}", GraphFallbackWarning, stacklevel=3)
    x = run_eager(plan, models, noise, ops=ops, model_kwargs=model_kwargs, generator=generator,
                  callback=callback, progress=progress, check_finite=check_finite)
    return x, "eager", note
