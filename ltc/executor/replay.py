"""A captured plan walk: static buffers, warm-up, capture (whole or per step) and replay.

Static buffers of one captured walk (allocated once, read and written by address by its graphs):
those of :class:`ltc.executor.walk.Walk` (``xs``, ``hist``, the ``"end"`` finite record, the tables), and

    step_t     0-d int64    the current step (per-step graphs: gathered on the device, incremented in-graph)
    kwargs     copies of the tensors in model_kwargs, nested dicts/lists too (refilled before every replay)

``whole``: one graph of all N steps, the step ops called with Python-int steps on the plan's
``[N, NCOLS]`` table.  ``step``: one graph per step signature ``(model or extrapolation, reads,
noisy, i % 2, i % H)`` (H = HISTORY_SLOTS); its body gathers ``timesteps[step_t]`` and an ``[H, NCOLS]`` table whose
rows all hold row ``step_t``, and calls the step ops with the Python int ``i % H`` -- the history
slots of step i -- so no step op needs a device step index.  Both take their steps with
:meth:`Walk.step`, the one place a step is taken.

Warm-up runs every distinct step (model, reads, noisy) once, eagerly, before any capture.  The
generator's state is saved before the warm-up and restored after it and after the capture, so
the replays draw the numbers the eager executor would draw from the same state.
"""
from __future__ import annotations

import threading

import torch
from torch.utils._pytree import tree_flatten, tree_map

from ..ops.contract import HISTORY_SLOTS, STEP_OPS
from .capture import GraphCaptureError, GraphTooLargeError, explain
from .walk import Walk


def _at_index(op, index: int):
    def call(x, other, hist, coefs, step, out, **kw):
        op(x, other, hist, coefs, index, out, **kw)
    return call


class _AtIndex:
    """The step ops (:data:`ltc.ops.contract.STEP_OPS`) with their step argument replaced by
    ``index`` (per-step graphs: ``i % H`` into an ``[H, NCOLS]`` table whose rows all hold the
    current step's row)."""

    def __init__(self, ops, index: int):
        for name in STEP_OPS:
            setattr(self, name, _at_index(getattr(ops, name), index))
        fast = getattr(ops, "unchecked", None)
        if fast is not None:  # the backend's entries without argument checks (Walk.advance)
            self.unchecked = _AtIndex(fast, index)


class GraphWalk(Walk):
    """The static buffers of one captured walk (a :class:`Walk` with copies of the tensor
    ``model_kwargs`` and the device step counter ``step_t``) and the graph bodies."""

    def __init__(self, plan, models, noise, ops, kwargs, generator, check: bool):
        copies = tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, kwargs)
        super().__init__(plan, models, noise, ops=ops, model_kwargs=copies, generator=generator,
                         check_finite="end" if check else "off")
        self.step_t = torch.zeros((), dtype=torch.long, device=noise.device)

    def load(self, noise, kwargs) -> None:
        """Copy the inputs of one run into the static buffers (device copies, no host sync)."""
        super().load(noise)
        for static, value in zip(tree_flatten(self.kwargs)[0], tree_flatten(kwargs)[0]):
            if isinstance(static, torch.Tensor):
                static.copy_(value)
        self.step_t.zero_()

    def signature(self, i: int) -> tuple:
        plan = self.plan
        return plan.models[i], plan.history_reads[i], plan.noisy[i], i % 2, i % HISTORY_SLOTS

    def whole(self) -> None:
        for i in range(self.plan.steps):
            self.step(i)

    def one_step(self, i: int):
        """The per-step graph body of step ``i``'s signature (reads the step index from step_t)."""
        ops = _AtIndex(self.ops, i % HISTORY_SLOTS)

        def body():
            rows = self.coefs.index_select(0, self.step_t.expand(HISTORY_SLOTS))
            t = self.timesteps.index_select(0, self.step_t.reshape(1))
            self.step(i, t=t, step_id=self.step_t, coefs=rows, ops=ops)
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
                self.step(i)
            else:
                self.step_t.fill_(i)
                self.one_step(i)()


class CapturedWalk:
    """A captured walk: its buffers and the graph replayed at each step (one graph, or one per
    signature), all in one memory pool of its own.  Replays of one walk are serialised by a lock
    (they share the static buffers); different walks share nothing, so they may replay from
    different threads or streams at once."""

    def __init__(self, walk: GraphWalk, sequence: list, n_graphs: int):
        self.walk, self.sequence, self.n_graphs = walk, sequence, n_graphs
        self.held: tuple = ()  # tensors the graphs read by address (set by the executor)
        self._lock = threading.Lock()

    @classmethod
    def capture(cls, mode, plan, models, noise, ops, kwargs, generator, check, backend) -> "CapturedWalk":
        walk = GraphWalk(plan, models, noise, ops, kwargs, generator, check)
        device, gens = noise.device, [generator] if generator is not None else []
        saved = [g.get_state() for g in gens]
        pool = backend.new_pool(device)

        def restore():
            for g, state in zip(gens, saved):
                g.set_state(state)

        def capture_one(body, what):
            walk.where = None
            try:
                return backend.capture(body, device, gens, pool=pool)
            except Exception as err:
                kind = GraphTooLargeError if isinstance(err, torch.OutOfMemoryError) else GraphCaptureError
                raise kind(explain(err, walk.where or what)) from err

        with torch.no_grad():
            walk.load(noise, kwargs)
            try:
                backend.warmup(lambda: walk.warm(mode), device)
                restore()
                backend.before_capture(device)
                if mode == "whole":
                    return cls(walk, [capture_one(walk.whole, "the whole walk")], 1)
                graphs = {}
                for i in range(plan.steps):
                    if walk.signature(i) not in graphs:
                        walk.step_t.fill_(i)  # a valid index for backends that execute while capturing
                        graphs[walk.signature(i)] = capture_one(walk.one_step(i), f"step {i}")
                return cls(walk, [graphs[walk.signature(i)] for i in range(plan.steps)], len(graphs))
            finally:
                restore()

    def __call__(self, noise, kwargs) -> torch.Tensor:
        with self._lock:
            walk = self.walk
            walk.load(noise, kwargs)
            for graph in self.sequence:
                graph.replay()
            return walk.finish().clone()
