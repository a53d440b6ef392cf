"""The graph executor: the plan walk captured once, then replayed -- whole trajectory or per step.

A compiled plan fixes every decision before sampling (which model runs at step i, whether step
i is extrapolated, how many past estimates it reads, whether it draws noise), so the walk of
:func:`ltc.executor.eager.run_eager` is a fixed sequence of device operations on fixed buffers, and
can be captured (:mod:`ltc.executor.replay`):

* ``"whole"`` -- all N steps in one graph.  Sampling is: copy the noise and the tensor
  ``model_kwargs`` into static buffers, one replay, copy the samples out.
* ``"step"`` -- one graph per step signature, replayed N times in plan order with the step
  index in device memory: for plans whose whole capture does not fit.

``ltc.sample(..., graph=...)`` (:func:`run`): ``"auto"`` samples a new key eagerly once (so a
one-off call, or a fresh lambda per call, never pays for a capture), and from the second call
with the same plan, shapes and models captures the whole walk, falls back to per-step graphs
when that capture runs out of memory, and samples eagerly with a
:class:`GraphFallbackWarning` naming the cause when capture fails (a model that synchronises
with the host, a host generator, keyword arguments that are not tensors or constants, ...); on
the CPU, with a ``callback`` or with ``check_finite="step"`` it is eager.  ``True`` captures at
the first call and raises (ValueError before any work for the CPU / callback / per-step check cases,
:class:`GraphCaptureError` for capture failures); ``"whole"`` / ``"step"`` demand that mode;
``False`` is eager.  Nothing inside a replay copies to the host; ``check_finite`` ``"auto"`` /
``"end"`` reads one device value after it (``"off"``: none).

A model's Python code runs at warm-up (once per distinct step) and at capture only; replays
repeat its device work, so Python side effects (counters, prints, host decisions) do not recur.

Captured walks are cached (:mod:`ltc.executor.cache`: keyed by plan fingerprint, shape, dtype,
device, model identities, ...; the 8 most recent are kept, each holding its models, buffers and
graph memory); a failed capture is remembered under its key too, so ``"auto"`` does not retry
it.  :func:`clear_cache` frees everything.  Capture happens through a backend
(:mod:`ltc.executor.capture`): CUDA graphs, or :class:`RecordedGraphs` to run graph mode on the
CPU (``with use_backend(RecordedGraphs()): ...``).  Not thread-safe: capture one walk at a time.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from .cache import GraphCache, identify, kwargs_signature
from .capture import CudaGraphs, GraphCaptureError, GraphTooLargeError, RecordedGraphs, registers_generators
from .eager import run_eager
from .replay import CapturedWalk

OPTIONS = ("auto", True, False, "whole", "step")
EXECUTORS = ("eager", "graph-whole", "graph-step")

__all__ = ["run", "check_option", "clear_cache", "cache_size", "use_backend", "GraphCaptureError",
           "GraphTooLargeError", "GraphFallbackWarning", "RecordedGraphs", "CudaGraphs", "OPTIONS"]


class GraphFallbackWarning(UserWarning):
    """``graph="auto"`` could not capture the walk and sampled eagerly (the message says why)."""


_backend = CudaGraphs()
_cache = GraphCache(capacity=8)
_seen = GraphCache(capacity=64)  # keys graph="auto" has sampled once, eagerly
FIRST_CALL = ("graph='auto' captures from the second call with the same plan, shapes and models; "
              "this first one ran eagerly")


def clear_cache() -> None:
    """Free every captured walk (graphs, static buffers) and every remembered capture failure."""
    _cache.clear()
    _seen.clear()


def cache_size() -> int:
    """Number of cached captured walks (and remembered failures)."""
    return len(_cache)


@contextlib.contextmanager
def use_backend(backend):
    """Use another capture backend inside the block, e.g. ``RecordedGraphs()`` to exercise graph
    mode on the CPU (see :mod:`ltc.executor.capture`)."""
    global _backend
    previous, _backend = _backend, backend
    try:
        yield backend
    finally:
        _backend = previous


def _is_option(graph) -> bool:
    return graph is True or graph is False or (isinstance(graph, str) and graph in OPTIONS)


def check_option(graph, device, callback=None, check_finite: str = "auto", step_noise=None) -> str | None:
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
    elif step_noise is not None:
        reason = ("step_noise feeds given noise to every step from the host; a captured walk draws its own "
                  "(use graph=False with step_noise, or generator= with graphs)")
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


def _flag(read) -> object:
    """A setting read through ``read()``, or None where this torch lacks it."""
    try:
        return read()
    except (AttributeError, RuntimeError, TypeError):
        return None


def ambient_numerics(device: torch.device) -> tuple:
    """The global settings a captured model's numerics depend on, for the cache key: autocast
    (on/off and dtype, for the device type), the float32 matmul precision and TF32 flags, the
    enabled scaled-dot-product-attention backends and deterministic algorithms.  A graph replays
    the kernels chosen at capture, so a walk captured under one setting is never replayed under
    another."""
    kind = torch.device(device).type
    cuda = torch.backends.cuda
    return (
        _flag(lambda: torch.is_autocast_enabled(kind)),
        _flag(lambda: str(torch.get_autocast_dtype(kind))),
        torch.get_float32_matmul_precision(),
        _flag(lambda: cuda.matmul.allow_tf32), _flag(lambda: torch.backends.cudnn.allow_tf32),
        _flag(lambda: cuda.matmul.allow_fp16_reduced_precision_reduction),
        _flag(lambda: cuda.matmul.allow_bf16_reduced_precision_reduction),
        _flag(cuda.flash_sdp_enabled), _flag(cuda.mem_efficient_sdp_enabled), _flag(cuda.math_sdp_enabled),
        _flag(lambda: cuda.cudnn_sdp_enabled()),
        torch.are_deterministic_algorithms_enabled(),
    )


def _sample(mode, plan, models, noise, ops, ops_name, kwargs, generator, check, defer):
    """Samples from the cached (or newly captured) walk; None when ``defer`` and this key is new."""
    backend = _backend
    allowed = getattr(backend, "ops_backends", None)
    if allowed is not None and ops_name not in allowed:
        raise GraphCaptureError(f"the {backend.name!r} capture backend cannot record the {ops_name!r} step ops "
                                f"(it records {allowed} only)")
    gen = graph_generator(plan, noise.device, generator)
    key = (plan.fingerprint, mode, tuple(noise.shape), str(noise.dtype), str(noise.device), ops_name, check,
           kwargs_signature(kwargs), ambient_numerics(noise.device), backend.name, id(backend))
    fns = [m.fn for m in models]
    identity = identify(fns, gen)
    captured = _cache.get(key, identity)
    if isinstance(captured, tuple):  # a remembered failure (class, message): do not capture again
        raise captured[0](captured[1])
    if captured is None:
        if defer and _seen.get(key, identity) is None:
            _seen.put(key, identity, True)
            return None
        try:
            captured = CapturedWalk.capture(mode, plan, models, noise, ops, kwargs, gen, check, backend)
        except GraphCaptureError as err:
            _cache.put(key, identity, (type(err), str(err)))
            raise
        identity = identify(fns, gen, hold=True)  # the graphs read these tensors by address
        captured.held = identity.held
        _cache.put(key, identity, captured)
    return captured(noise, kwargs)


def run(plan, models, noise, *, graph="auto", ops, ops_name: str, model_kwargs=None, generator=None,
        callback=None, progress: bool = False, check_finite: str = "auto", step_noise=None):
    """Sample along ``plan`` from ``noise`` with graphs when ``graph`` allows, else eagerly.
    ``step_noise`` (given per-step noise, :class:`ltc.executor.walk.Walk`) means eager.

    Returns ``(samples, executor, note)``: executor is one of EXECUTORS, note says why graphs
    were not used (or None).  ``graph="auto"`` samples a new key (plan, shapes, models, ...)
    eagerly once -- a one-off call or a fresh lambda per call never pays for a capture -- and
    from the second call on tries the whole walk, then per-step graphs when the whole capture
    runs out of memory, and samples eagerly with a GraphFallbackWarning when capture fails.
    ``True`` captures at once and raises GraphCaptureError instead of falling back;
    ``"whole"`` / ``"step"`` demand that mode.
    """
    kwargs = model_kwargs or {}
    note = check_option(graph, noise.device, callback, check_finite, step_noise)
    if note is None:
        check = check_finite != "off"
        modes = ("whole", "step") if graph in ("auto", True) else (graph,)
        errors, last = [], None
        for mode in modes:
            try:
                defer = graph == "auto" and mode == modes[0]
                x = _sample(mode, plan, models, noise, ops, ops_name, kwargs, generator, check, defer)
            except GraphCaptureError as err:
                errors.append(str(err))
                last = err
                if isinstance(err, GraphTooLargeError):
                    continue
                break
            if x is None:
                note = FIRST_CALL
                break
            return x, f"graph-{mode}", "; ".join(errors) or None
        if note is None:
            note = "; ".join(errors)
            if graph != "auto":
                raise type(last)(note) from last
            warnings.warn(f"graph='auto' samples eagerly: {note}", GraphFallbackWarning, stacklevel=3)
    x = run_eager(plan, models, noise, ops=ops, model_kwargs=model_kwargs, generator=generator,
                  callback=callback, progress=progress, check_finite=check_finite, step_noise=step_noise)
    return x, "eager", note
