"""The fixed costs of a CPU eager step, checked by what it runs rather than timed (speed is never
asserted; ``bench/loop_overhead.py`` measures it): the reference ops read a CPU table's row as
host floats (no fifteen 0-d tensors per step), and ``check_finite="step"`` certifies a step with
one sum and one host read, falling back to the exact check only when that sum is not finite.
Neither may change a result: the host floats give the 0-d tensors' bits in every storage dtype,
and a state whose sum overflows while every element is finite still passes.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ltc
from ltc.executor.walk import Walk, all_finite, sum_is_finite
from ltc.ops import reference
from ltc.ops.contract import NCOLS, compute_dtype

STORAGE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class AtenOps(TorchDispatchMode):
    """Counts the aten operations run inside the ``with`` block, by name."""

    def __init__(self):
        super().__init__()
        self.count = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def walk_of(dtype: torch.dtype, steps: int = 6) -> Walk:
    """A CPU reference walk of DPM-Solver++(2M) (eps model) from noise, ``check_finite="step"``."""
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    model = ltc.Model(lambda x, t: x * 0.1, "eps", "tiny")
    _, info = ltc.sample(model, ltc.Schedule.vp("scaled_linear", spacing="trailing"), steps=steps, noise=noise,
                         progress=False, return_info=True)
    walk = Walk(info.plan, [model], noise, ops=reference, check_finite="step")
    walk.load(noise)
    return walk


def test_a_cpu_reference_step_reads_its_row_as_host_floats():
    """The row of a plain CPU table is read as Python floats, the table's values (it failed
    before: ``coefs[step].unbind()``, fifteen 0-d tensors on every call of either op)."""
    coefs = torch.randn(6, NCOLS, generator=torch.Generator().manual_seed(1))
    row = reference._row(coefs, 3)
    assert all(type(c) is float for c in row) and row == coefs[3].tolist()


def test_captured_or_traced_steps_keep_their_row_as_tensors():
    """Under a dispatch mode (a graph recording, fake tensors, make_fx) and for a device step the
    row stays 0-d tensors, read when the recorded or traced ops run: a per-step graph replays one
    capture with other rows in its table (tests/test_graphs.py checks the replays)."""
    coefs = torch.randn(6, NCOLS, generator=torch.Generator().manual_seed(1))
    with AtenOps():
        in_mode = reference._row(coefs, 3)
    for row in (in_mode, reference._row(coefs, torch.tensor(3))):
        assert all(isinstance(c, torch.Tensor) and c.ndim == 0 for c in row)
        assert torch.equal(torch.stack(list(row)), coefs[3])


@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_host_float_coefficients_give_the_bits_of_the_table(dtype):
    """A host step (Python floats of the row) and a device step (0-d tensors gathered from the
    same table) give the same bits, for every storage dtype, guidance, noise and reads: torch
    rounds a Python scalar to the compute dtype, and the table's values are exact there."""
    gen, ct = torch.Generator().manual_seed(2), compute_dtype(dtype)
    x, m = torch.randn(2, 7, generator=gen).to(dtype), torch.randn(4, 7, generator=gen).to(dtype)
    z, hist = torch.randn(2, 7, generator=gen).to(dtype), torch.randn(4, 2, 7, generator=gen).to(dtype)
    coefs = (torch.randn(6, NCOLS, generator=gen, dtype=torch.float64) / 3).to(ct)
    for reads in range(4):
        results = []
        for step in (5, torch.tensor(5)):
            h, out, h2, out2 = hist.clone(), torch.empty_like(x), hist.clone(), torch.empty_like(x)
            reference.model_step(x, m, h, coefs, step, out, reads=reads, cfg=True, noise=z)
            reference.extrapolate_step(x, m[2:], h2, coefs, step, out2, reads=min(reads, 2))
            results.append((h, out, h2, out2))
        for host, device in zip(*results):
            assert torch.equal(host, device), (dtype, reads)


@pytest.mark.parametrize("dtype, sums", [(torch.float32, 1), (torch.float16, 2)], ids=str)
def test_step_mode_certifies_a_finite_step_with_one_sum_and_one_host_read(dtype, sums):
    """A finite model step costs one reduction per tensor it wrote (x_{i+1}; with rounded
    float16 storage D_i too) and one host read; the exact three-pass check does not run (it
    failed before: ``x - x``, ``eq`` and ``all`` per tensor)."""
    walk = walk_of(dtype)
    walk.step(0)
    with AtenOps() as ops:
        walk.step(1)
    assert ops.count["sum"] == sums and ops.count["_local_scalar_dense"] == 1, ops.count
    assert ops.count["eq"] == 0 and ops.count["all"] == 0 and ops.count["isfinite"] == 0, ops.count


def test_sum_is_finite_proves_finiteness_and_nothing_when_false():
    finite = torch.tensor([1.0, -2.0, 3e30])
    assert sum_is_finite([finite]) and sum_is_finite([finite, finite.double()])
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not sum_is_finite([torch.tensor([1.0, bad])])
        assert not sum_is_finite([finite, torch.tensor([bad])])
    assert not sum_is_finite([torch.tensor([float("inf"), float("-inf")])])  # NaN, not a cancellation
    big = torch.full((16,), 3e37)  # every element finite; the float32 sum overflows
    assert not sum_is_finite([big]) and bool(all_finite(big))
    assert sum_is_finite([torch.full((16,), 6e4, dtype=torch.float16)])  # accumulated in float32, not float16


@pytest.mark.parametrize("check_finite", ["step", "end", "off"])
def test_finite_states_whose_sum_overflows_are_not_refused(check_finite):
    """Every element finite but their float32 sum infinite: the exact check decides, and passes."""
    model = ltc.Model(lambda x, t: torch.full_like(x, 2.5e37), "x0", "huge")
    noise = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    out = ltc.sample(model, ltc.Schedule.vp("scaled_linear", spacing="trailing"), steps=6, noise=noise,
                     progress=False, check_finite=check_finite)
    assert not sum_is_finite([out]) and torch.equal(out, torch.full_like(out, 2.5e37))
