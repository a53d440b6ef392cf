"""What the per-op tests share: the backends, one tolerance table, a pairwise case generator, input
builders and the plain-formula specification of each op.

* Backends: ``reference`` always (on CUDA where there is a device, else the CPU); ``triton`` on the
  CPU in Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` before triton is
  imported when there is no CUDA device) or on CUDA; ``cuda`` (the extension) only on a GPU,
  marked ``gpu`` and skipped with the reason when the extension is not built (a failure instead
  with ``LTC_REQUIRE_CUDA_EXT=1``).  Every backend gets the same cases.
* The specification is the equations of :mod:`ltc.ops.contract`, evaluated here in float64 from
  the stored inputs (:func:`spec_model_step`, :func:`spec_extrapolate_step`,
  :func:`spec_transition_dots`), independently of :mod:`ltc.ops.reference` (itself a backend
  under test).  Each also returns the magnitude of every result: the sum of the absolute values of
  the terms that make it up, which bounds the rounding error of the arithmetic.
* Inputs are fresh random normals per case; ``out`` and the history slot written are pre-filled
  with NaN (an unwritten element fails), the slots a step does not read are NaN (reading one
  fails), the gaps of non-contiguous inputs are NaN (ignoring their strides fails), and every
  slot but the written one, and every read-only input, must keep its exact bits.
* Cases: shape x dtype in full, the other parameters combined pairwise (:func:`pairwise`).
"""
from __future__ import annotations

import importlib
import itertools
import os
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import pytest
import torch

from ltc import ops
from ltc.ops.contract import HISTORY_SLOTS, NCOLS, Col, compute_dtype

CUDA = torch.cuda.is_available()
NAN = float("nan")
H = HISTORY_SLOTS
N_ROWS = 7                                                    # rows of the random coefficient tables
STORAGE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SHAPES = [(1, 1), (1, 7), (3, 341), (1, 65537), (2, 4, 9, 11)]  # 1, 7, 1023, 65537 elements, a 4-D latent
DOTS_SHAPES = SHAPES + [(2, 20001), (5, 3)]                  # + rows of several chunks, many short rows
STEPS = (0, 1, 2, N_ROWS - 1)                                 # every slot written; the table's last row


# ---------------------------------------------------------------- tolerances

class Tol(NamedTuple):
    value: float   # relative to each value: one rounding to the storage dtype (one ulp: Triton's
                   # interpreter rounds fp32 -> bf16 by truncation, GPUs to nearest even)
    terms: float   # relative to the magnitude of the terms: arithmetic in the compute dtype
    tiny: float    # absolute: one ulp among the storage dtype's subnormals


TOL = {  # per storage dtype; the compute dtype is float32 for all but float64
    torch.float64: Tol(value=2.0 ** -52, terms=1e-12, tiny=2.0 ** -1074),
    torch.float32: Tol(value=2.0 ** -23, terms=1e-6, tiny=2.0 ** -149),
    torch.float16: Tol(value=2.0 ** -10, terms=1e-6, tiny=2.0 ** -24),
    torch.bfloat16: Tol(value=2.0 ** -7, terms=1e-6, tiny=2.0 ** -133),
}


def assert_matches(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor, dtype, what: str) -> None:
    """Every element of ``got`` within the rounding bound of ``want`` (float64) for storage ``dtype``."""
    got = got.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert not got.isnan().any(), f"{what} has {int(got.isnan().sum())} unwritten (NaN) elements"
    tol = TOL[dtype]
    err = (got - want).abs()
    bad = err > tol.terms * magnitude + tol.value * want.abs() + tol.tiny
    if bad.any():
        i = int(torch.argmax((err - tol.terms * magnitude).masked_fill(~bad, -1).flatten()))
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements off; e.g. element {i}: got "
                             f"{got.flatten()[i].item()!r}, expected {want.flatten()[i].item()!r} (terms of "
                             f"magnitude {magnitude.flatten()[i].item():.3g}, {dtype})")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.shape == b.shape and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


# ---------------------------------------------------------------- pairwise cases

def pairwise(factors: dict[str, list]) -> list[dict]:
    """Rows of one value per factor in which every two values of every two factors appear together
    at least once (all pairs, not the full product).  Deterministic greedy: the first uncovered
    pair starts a row; every other factor takes the value that covers most new pairs with the
    values chosen so far (the first such value on a tie)."""
    names, sizes = list(factors), [len(v) for v in factors.values()]
    if len(names) == 1:  # no pairs: every value once
        return [{names[0]: v} for v in factors[names[0]]]

    def pair(k, v, m, w):
        return (k, v, m, w) if k < m else (m, w, k, v)

    todo = {(i, a, j, b) for i, j in itertools.combinations(range(len(names)), 2)
            for a in range(sizes[i]) for b in range(sizes[j])}
    rows = []
    while todo:
        i, a, j, b = min(todo)
        row = {i: a, j: b}
        for k in range(len(names)):
            if k not in row:
                row[k] = max(range(sizes[k]), key=lambda v: sum(pair(k, v, m, w) in todo for m, w in row.items()))
        todo -= {pair(k, row[k], m, row[m]) for k, m in itertools.combinations(sorted(row), 2)}
        rows.append({names[k]: factors[names[k]][row[k]] for k in range(len(names))})
    return rows


def case_id(case: dict) -> str:
    parts = []
    for name, v in case.items():
        if name == "shape":
            parts.append("x".join(map(str, v)))
        elif name == "dtype":
            parts.append(str(v).replace("torch.", ""))
        elif isinstance(v, bool):
            parts.append(name if v else "")
        elif v is None:
            continue
        elif name == "alias":
            parts.append(f"out={v}")
        elif name == "step_kind":
            parts.append({"int": "", "tensor": "devstep", "int32": "devstep32"}[v])
        else:
            parts.append(f"{name}{v}")
    return "-".join(p for p in parts if p)


def params(cases: list[dict]) -> list:
    return [pytest.param(c, id=case_id(c)) for c in cases]


def generator(*key) -> torch.Generator:
    """A generator seeded from ``key`` (stable across runs and case orders)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


# ---------------------------------------------------------------- backends

@dataclass(frozen=True)
class Backend:
    name: str
    module: ModuleType
    device: str


def _triton_device() -> tuple[str | None, str]:
    """``(device, '')`` where the triton backend runs in this process, else ``(None, why not)``."""
    kernels = importlib.import_module("ltc.kernels")
    if not kernels.AVAILABLE:
        return None, f"triton backend unavailable: {kernels.UNAVAILABLE_REASON}"
    launch = importlib.import_module("ltc.kernels.launch")
    if launch.interpreted(launch.block_offsets):
        return "cpu", ""
    if CUDA:
        return "cuda", ""
    return None, "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1) and there is no CUDA device"


TRITON_DEVICE, TRITON_SKIP = _triton_device()
TRITON_INTERPRETED = TRITON_DEVICE == "cpu"
needs_triton = pytest.mark.skipif(TRITON_DEVICE is None, reason=TRITON_SKIP or "-")

# every backend, on the device it runs on here
BACKENDS = [pytest.param("reference"), pytest.param("triton", marks=needs_triton),
            pytest.param("cuda", marks=pytest.mark.gpu)]
# the compiled backends, whose modules import (and check arguments) anywhere
CHECKED = [pytest.param("triton", marks=pytest.mark.skipif(
    not importlib.import_module("ltc.kernels").AVAILABLE, reason="triton is not importable")), "cuda"]


def backend(name: str) -> Backend:
    """The backend ``name`` through :func:`ltc.ops.resolve` (which checks it provides every op);
    the extension, when not built, skips (fails with LTC_REQUIRE_CUDA_EXT=1)."""
    if name == "reference":
        return Backend(name, ops.resolve(name, "cpu")[1], "cuda" if CUDA else "cpu")
    if name == "triton":
        return Backend(name, ops.resolve(name, TRITON_DEVICE)[1], TRITON_DEVICE)
    try:
        return Backend(name, ops.resolve(name, "cuda")[1], "cuda")
    except ValueError as exc:
        if os.environ.get("LTC_REQUIRE_CUDA_EXT") == "1":
            pytest.fail(str(exc))
        pytest.skip(f"CUDA extension not available: {exc}")


def module(name: str) -> ModuleType:
    """The module of backend ``name`` whether or not it can run here (argument checks come first)."""
    return importlib.import_module({"reference": "ltc.ops.reference", "triton": "ltc.kernels",
                                    "cuda": "ltc.ops.cuda"}[name])


# ---------------------------------------------------------------- input builders

def random(shape, dtype, device, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def nan_like(x: torch.Tensor) -> torch.Tensor:
    """A contiguous NaN tensor of x's shape, dtype and device (whatever x's strides)."""
    return torch.full(x.shape, NAN, dtype=x.dtype, device=x.device)


def strided(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a non-contiguous view: every other element of a last dim twice as long,
    the gaps NaN (a one-element tensor stays contiguous)."""
    buffer = torch.full((*t.shape[:-1], 2 * t.shape[-1]), NAN, dtype=t.dtype, device=t.device)
    view = buffer[..., ::2]
    view.copy_(t)
    return view


def late(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a contiguous view that starts one element into its storage (unaligned)."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buffer[1:].view(t.shape)
    view.copy_(t)
    return view


def table(dtype, device, gen, rows=N_ROWS) -> torch.Tensor:
    """A random ``[rows, NCOLS]`` coefficient table in the compute dtype of ``dtype`` storage."""
    return random((rows, NCOLS), compute_dtype(dtype), device, gen)


def history(shape, dtype, device, gen, step: int, reads: int, slots: int = H) -> torch.Tensor:
    """``[slots, *shape]``: the slots the step reads random, every other slot NaN."""
    hist = torch.full((slots, *shape), NAN, dtype=dtype, device=device)
    for back in range(1, reads + 1):
        hist[(step - back) % slots] = random(shape, dtype, device, gen)
    return hist


def step_arg(step: int, kind: str, device):
    """``step`` as a host int, or a 0-d int64 / int32 tensor on ``device``."""
    if kind == "int":
        return step
    return torch.tensor(step, dtype=torch.int64 if kind == "tensor" else torch.int32, device=device)


# ---------------------------------------------------------------- the specification (float64)

def _f64(t):
    return t.detach().double().cpu()


def _row(coefs, step):
    return _f64(coefs)[int(step)]


def spec_model_step(x, model_out, hist, coefs, step, *, reads, cfg, noise=None):
    """``(out, |out terms|, D_i, |D_i terms|)``:  m = m_u + G (m_c - m_u) (cfg);  D_i = PX x + PM m;
    out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z."""
    c = _row(coefs, step)
    X, M = _f64(x), _f64(model_out)
    if cfg:
        m_u, m_c = M.chunk(2)
        M = m_u + c[Col.GUIDANCE] * (m_c - m_u)
        m_mag = m_u.abs() + c[Col.GUIDANCE].abs() * (m_c.abs() + m_u.abs())
    else:
        m_mag = M.abs()
    d = c[Col.PX] * X + c[Col.PM] * M
    d_mag = (c[Col.PX] * X).abs() + c[Col.PM].abs() * m_mag
    rest = [c[Col.A] * X]
    for back, col in ((1, Col.B1), (2, Col.B2), (3, Col.B3))[:reads]:
        rest.append(c[col] * _f64(hist[(int(step) - back) % hist.shape[0]]))
    if noise is not None:
        rest.append(c[Col.NOISE] * _f64(noise))
    out = c[Col.B0] * d + sum(rest)
    out_mag = c[Col.B0].abs() * d_mag + sum(t.abs() for t in rest)
    return out, out_mag, d, d_mag


def spec_extrapolate_step(x, x_prev, hist, coefs, step, *, reads):
    """``(out, |out terms|, D_i, |D_i terms|)``:  out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};
    D_i = IN out + IC x."""
    c = _row(coefs, step)
    X = _f64(x)
    terms = [c[Col.EX] * X, c[Col.EXP] * _f64(x_prev)]
    for back, col in ((1, Col.EH1), (2, Col.EH2))[:reads]:
        terms.append(c[col] * _f64(hist[(int(step) - back) % hist.shape[0]]))
    out = sum(terms)
    out_mag = sum(t.abs() for t in terms)
    d = c[Col.IN] * out + c[Col.IC] * X
    return out, out_mag, d, c[Col.IN].abs() * out_mag + (c[Col.IC] * X).abs()


def spec_transition_dots(x, x_prev, x_target):
    """``([B, 2], magnitudes)``: per sample ``[<d, r>, <d, d>]``, d = x - x_prev, r = x_target - x."""
    B = x.shape[0]
    X, P, T = (_f64(t).reshape(B, -1) for t in (x, x_prev, x_target))
    d, r = X - P, T - X
    return (torch.stack([(d * r).sum(1), (d * d).sum(1)], 1),
            torch.stack([(d * r).abs().sum(1), (d * d).sum(1)], 1))


# ---------------------------------------------------------------- running a step and checking it

def check_step(out, hist, hist_before, step, spec, dtype) -> None:
    """``out`` and the slot written against ``spec`` (from :func:`spec_model_step` or
    :func:`spec_extrapolate_step`); every other slot kept its bits."""
    want, want_mag, d, d_mag = spec
    written = int(step) % hist.shape[0]
    assert_matches(out, want, want_mag, dtype, "out")
    assert_matches(hist[written], d, d_mag, dtype, f"the history slot written ({written})")
    for slot in range(hist.shape[0]):
        if slot != written:
            assert same_bits(hist[slot], hist_before[slot]), f"history slot {slot} was modified"


def _unchanged(before: dict, after: dict) -> None:
    for name, t in before.items():
        assert same_bits(after[name], t), f"the op wrote into its read-only input {name}"


def assert_refused_before_any_write(op, base: dict, bad: list) -> None:
    """For each ``(change, error, match)`` of ``bad``: ``op(**{**base, **change})`` raises ``error``
    matching ``match`` and leaves ``hist`` as it was."""
    for change, error, match in bad:
        args = {**base, **change}
        hist_before = args["hist"].clone()
        with pytest.raises(error, match=match):
            op(**args)
        assert same_bits(args["hist"], hist_before), change


def cuda_backend_or_skip(name: str) -> "Backend":
    """The backend ``name`` on a CUDA device (GPU tests), or a skip where it runs elsewhere."""
    backend_ = backend(name)
    if backend_.device != "cuda":
        pytest.skip(f"{name} runs in its CPU interpreter here")
    return backend_


def assert_device_step_gives_the_host_bits(device, gen, like: torch.Tensor, call, max_reads: int) -> None:
    """For every row of the table and every ``reads`` up to ``max_reads``: ``call(step, hist, out,
    reads)`` with a host int step and with a 0-d device tensor step writes the same bits into
    ``out`` and ``hist``."""
    for step in range(N_ROWS):
        for reads in range(max_reads + 1):
            hist = history(tuple(like.shape), like.dtype, device, gen, step, reads)
            results = []
            for s in (step, torch.tensor(step, device=device)):
                h, out = hist.clone(), nan_like(like)
                call(s, h, out, reads)
                results.append((out, h))
            (out_int, h_int), (out_dev, h_dev) = results
            assert not out_int.isnan().any() and not h_int[step % H].isnan().any()
            assert same_bits(out_int, out_dev) and same_bits(h_int, h_dev), (step, reads)


def run_model_step(module, x, model_out, hist, coefs, step, *, reads, cfg, noise=None, alias=None):
    """``module.model_step`` on these inputs (``alias="x"``: x's buffer is also ``out``), checked
    against the specification; returns ``(out, hist)``."""
    spec = spec_model_step(x, model_out, hist, coefs, step, reads=reads, cfg=cfg, noise=noise)
    inputs = {"model_out": model_out, "coefs": coefs, **({"noise": noise} if noise is not None else {})}
    if alias != "x":
        inputs["x"] = x
    before, hist_before = {k: t.clone() for k, t in inputs.items()}, hist.clone()
    out = x if alias == "x" else nan_like(x)
    module.model_step(x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise)
    check_step(out, hist, hist_before, step, spec, out.dtype)
    _unchanged(before, inputs)
    return out, hist


def run_extrapolate_step(module, x, x_prev, hist, coefs, step, *, reads, alias=None):
    """``module.extrapolate_step`` on these inputs (``alias`` ``"x"`` or ``"x_prev"``: that input's
    buffer is also ``out``), checked against the specification; returns ``(out, hist)``."""
    spec = spec_extrapolate_step(x, x_prev, hist, coefs, step, reads=reads)
    inputs = {name: t for name, t in (("x", x), ("x_prev", x_prev), ("coefs", coefs)) if name != alias}
    before, hist_before = {k: t.clone() for k, t in inputs.items()}, hist.clone()
    out = {"x": x, "x_prev": x_prev}.get(alias) if alias else nan_like(x)
    module.extrapolate_step(x, x_prev, hist, coefs, step, out, reads=reads)
    check_step(out, hist, hist_before, step, spec, out.dtype)
    _unchanged(before, inputs)
    return out, hist


def run_transition_dots(module, x, x_prev, x_target) -> torch.Tensor:
    """``module.transition_dots`` checked against the specification: ``[B, 2]`` in the compute
    dtype, each dot within the rounding bound of the sum of the magnitudes of its terms (twice the
    compute tolerance: a sum of many terms).  Returns the result."""
    want, magnitude = spec_transition_dots(x, x_prev, x_target)
    inputs = {"x": x, "x_prev": x_prev, "x_target": x_target}
    before = {k: t.clone() for k, t in inputs.items()}
    got = module.transition_dots(x, x_prev, x_target)
    assert got.dtype == compute_dtype(x.dtype) and got.shape == (x.shape[0], 2), (got.dtype, got.shape)
    assert got.device == x.device
    err = (got.double().cpu() - want).abs()
    assert torch.all(err <= 2 * TOL[x.dtype].terms * magnitude + 1e-30), (got, want)
    _unchanged(before, inputs)
    return got
