"""A captured plan walk: static buffers, warm-up, capture (whole or per step) and replay.

Static buffers of one captured walk (allocated once, read and written by address by its graphs):

    xs[2]      [B, *S]      state; step i reads xs[i % 2] and writes xs[(i + 1) % 2] (which held x_{i-1})
    hist       [3, B, *S]   clean estimates; D_i in slot i % 3
    first_bad  0-d int64    first step whose model output was not finite (-1: none), as check_finite="end"
    step_t     0-d int64    the current step (per-step graphs: gathered on the device, incremented in-graph)
    kwargs     copies of the tensor model_kwargs (refilled before every replay)

``whole``: one graph of all N steps, the step ops called with Python-int steps on the plan's
``[N, NCOLS]`` table.  ``step``: one graph per step signature ``(model or extrapolation, reads,
noisy, i % 2, i % 3)``; its body gathers ``timesteps[step_t]`` and a ``[3, NCOLS]`` table whose
rows all hold row ``step_t``, and calls the step ops with the Python int ``i % 3`` -- the history
slots of step i -- so no step op needs a device step index.  Both go through
:func:`ltc.executor.advance`, the one place a step is taken.

Warm-up runs every distinct step (model, reads, noisy) once, eagerly, before any capture.  The
generator's state is saved before the warm-up and restored after it and after the capture, so
the replays draw the numbers the eager executor would draw from the same state.
"""
from __future__ import annotations

import torch

from .executor import NonFiniteError, advance, compute_dtype
from .graph_capture import GraphCaptureError, GraphTooLargeError, explain
from .models import check_output
from .plan import EXTRAPOLATE, HISTORY_SLOTS


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


class CapturedWalk:
    """A captured walk: its buffers and the graph replayed at each step (one graph, or one per signature)."""

    def __init__(self, walk: _Walk, sequence: list, n_graphs: int):
        self.walk, self.sequence, self.n_graphs = walk, sequence, n_graphs

    @classmethod
    def capture(cls, mode, plan, models, noise, ops, kwargs, generator, check, backend) -> "CapturedWalk":
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
