"""The model step's "first bad step" word (``model_step(..., finite=word)``) on every backend:
``word <- min(word, 2 i + f)`` when step i is not finite, f = 0 for a non-finite model output
(either guidance half), f = 1 when only what the step stored (x_{i+1}, D_i) is not finite; the
first bad step is kept whatever comes later; a finite step leaves the word alone (over outputs
pre-filled with NaN).  Sizes 1, 7, 15, 17, 1023, 65537 and a 4-D latent with n % 16 != 0
(every Triton block shape: one masked block, full blocks and a tail).
"""
from __future__ import annotations

import pytest
import torch

import cases
from cases import N_ROWS, generator, history, nan_like, random, same_bits, table
from ltc.ops.reference import FINITE_SENTINEL
from ltc.ops.contract import Col

SHAPES = [(1, 1), (1, 7), (3, 5), (1, 17), (3, 341), (1, 65537), (2, 3, 5, 7)]  # 4-D: 210 elements
NAN, INF = float("nan"), float("inf")


def word(device, dtype=torch.int32) -> torch.Tensor:
    return torch.full((1,), FINITE_SENTINEL[dtype], dtype=dtype, device=device)


def step_once(backend, shape, step, *, model_out=None, dtype=torch.float32, cfg=True, coefs=None, finite):
    """One model step (reads 2, noise) on fresh finite inputs; ``model_out`` replaces the model
    output (``[2B, *S]`` with cfg).  Returns ``(out, hist)``."""
    device, gen = backend.device, generator("finite word", shape, step, dtype)
    x = random(shape, dtype, device, gen)
    m = random((shape[0] * (2 if cfg else 1), *shape[1:]), dtype, device, gen) if model_out is None else model_out
    hist = history(shape, dtype, device, gen, step, 2)
    coefs = table(dtype, device, gen) if coefs is None else coefs
    out = nan_like(x)  # pre-filled with NaN, as the unread history slots: only what the step writes counts
    backend.module.model_step(x, m, hist, coefs, step, out, reads=2, cfg=cfg, noise=random(shape, dtype, device, gen),
                              finite=finite)
    return out, hist


def poisoned_output(shape, dtype, device, *, cfg, where="first", half=0):
    """A finite model output with one NaN (at the first or last element of half ``half``)."""
    m = random((shape[0] * (2 if cfg else 1), *shape[1:]), dtype, device, generator("poison", shape, where))
    flat = m.view(2 if cfg else 1, -1)[half]
    flat[0 if where == "first" else -1] = NAN
    return m


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_first_bad_step_is_kept(backend, shape):
    """NaN in the model output at step 3 (2 * 3 + 0), then at step 1 of a later call: the word
    holds 2 * 1 + 0; a later bad step (5) never overwrites it; a finite step leaves it alone."""
    w = word(backend.device)
    step_once(backend, shape, 4, finite=w)
    assert w.item() == FINITE_SENTINEL[torch.int32], "a finite step changed the word"
    step_once(backend, shape, 3, model_out=poisoned_output(shape, torch.float32, backend.device, cfg=True), finite=w)
    assert w.item() == 6
    step_once(backend, shape, 1, model_out=poisoned_output(shape, torch.float32, backend.device, cfg=True,
                                                          where="last", half=1), finite=w)
    assert w.item() == 2
    step_once(backend, shape, 5, model_out=poisoned_output(shape, torch.float32, backend.device, cfg=True), finite=w)
    assert w.item() == 2


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (3, 341), (2, 3, 5, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).replace("torch.", ""))
def test_a_finite_run_leaves_the_sentinel(backend, shape, dtype):
    for word_dtype in (torch.int32, torch.int64):
        w = word(backend.device, word_dtype)
        for step in range(N_ROWS):
            step_once(backend, shape, step, dtype=dtype, cfg=step % 2 == 0, finite=w)
        assert w.item() == FINITE_SENTINEL[word_dtype], (word_dtype, w)


@pytest.mark.parametrize("shape", [(1, 7), (3, 341), (2, 3, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_an_overflow_of_the_step_alone_gives_f_1(backend, shape):
    """A finite model output, but the update overflows: in the float32 arithmetic (a huge A), or
    only when stored (float16 storage, a result beyond 65504): 2 i + 1, int32 and int64 words."""
    device = backend.device
    for dtype, a in ((torch.float32, INF), (torch.float16, 1e9), (torch.bfloat16, INF)):
        coefs = table(dtype, device, generator("overflow", dtype))
        coefs[:, Col.A] = a  # A x: infinite, or finite in float32 but beyond float16's 65504 once stored
        for word_dtype in (torch.int32, torch.int64):
            w = word(device, word_dtype)
            out, _ = step_once(backend, shape, 5, dtype=dtype, coefs=coefs, finite=w)
            assert not torch.isfinite(out).all()
            assert w.item() == 2 * 5 + 1, (dtype, word_dtype, w)


def test_a_nan_in_either_guidance_half_or_without_guidance_gives_f_0(backend):
    shape = (2, 3, 5, 7)
    for cfg, half in ((True, 0), (True, 1), (False, 0)):
        for where in ("first", "last"):
            w = word(backend.device)
            m = poisoned_output(shape, torch.bfloat16, backend.device, cfg=cfg, where=where, half=half)
            step_once(backend, shape, 2, model_out=m, dtype=torch.bfloat16, cfg=cfg, finite=w)
            assert w.item() == 4, (cfg, half, where)
            m.view(-1)[0 if where == "first" else -1] = INF
            step_once(backend, shape, 6, model_out=m, dtype=torch.bfloat16, cfg=cfg, finite=w)
            assert w.item() == 4


def test_the_word_is_read_and_written_on_the_device_only(backend):
    """The same bits of out and hist with and without the word (the word adds no arithmetic)."""
    shape = (3, 341)
    runs = [step_once(backend, shape, 3, finite=f) for f in (None, word(backend.device))]
    assert same_bits(runs[0][0], runs[1][0]) and same_bits(runs[0][1], runs[1][1])


@pytest.mark.parametrize("name", [pytest.param("triton", marks=cases.needs_triton),
                                  pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_device_step_outside_the_table_records_its_poisoned_output(name):
    backend = cases.backend(name)
    for bad in (N_ROWS, N_ROWS + 3):
        w = word(backend.device)
        step_once(backend, (2, 1500), torch.tensor(bad, device=backend.device), finite=w)
        assert w.item() == 2 * bad + 1


def test_a_bad_word_is_refused_before_any_work(checked):
    """Every backend with checks refuses a word that is not a 1-element int32/int64 tensor, and
    one sharing memory with an output, naming ``finite``."""
    gen = generator("bad word")
    x, hist, coefs = random((2, 5), torch.float32, "cpu", gen), history((2, 5), torch.float32, "cpu", gen, 1, 1), \
        table(torch.float32, "cpu", gen)
    m, out = random((2, 5), torch.float32, "cpu", gen), torch.empty(2, 5)
    base = dict(x=x, model_out=m, hist=hist, coefs=coefs, step=1, out=out, reads=1, cfg=False, noise=None)
    bad = [(dict(finite=torch.zeros(1)), TypeError, "finite must be a 1-element int32 or int64 tensor"),
           (dict(finite=torch.zeros(2, dtype=torch.int32)), TypeError, r"got a torch.int32 tensor of shape \(2,\)"),
           (dict(finite=3), TypeError, "finite must be a 1-element int32 or int64 tensor"),
           (dict(finite=out.view(torch.int32)[0, :1]), ValueError, "out overlaps finite")]
    if checked.__name__ == "ltc.ops.cuda":
        bad = bad[:3]  # then: the cuda backend needs CUDA tensors
    cases.assert_refused_before_any_write(checked.model_step, base, bad)


def test_the_reference_refuses_a_bad_word():
    from ltc.ops import reference
    gen = generator("reference bad word")
    x, m, hist, coefs = (random((2, 5), torch.float32, "cpu", gen), random((2, 5), torch.float32, "cpu", gen),
                         history((2, 5), torch.float32, "cpu", gen, 1, 1), table(torch.float32, "cpu", gen))
    with pytest.raises(TypeError, match="finite must be a 1-element int32 or int64 tensor"):
        reference.model_step(x, m, hist, coefs, 1, torch.empty(2, 5), reads=1, cfg=False, finite=torch.zeros(1))
