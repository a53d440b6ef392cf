"""The step operations as torch custom operators (:mod:`ltc.ops.library`, ``torch.ops.ltc.*``):
``torch.library.opcheck`` passes for every operator (schema, fake kernel, functionalization);
a written argument aliasing another is refused before any write; the contract-signature functions
pick the in-place variant for ``out = x`` / ``out = x_prev``; and a loop of them compiles with
``torch.compile(fullgraph=True)`` to the eager reference's results.  The reference backend on the
CPU; Triton where it runs here (its interpreter on the CPU); the extension on a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import cases
from cases import H, generator, needs_triton, random, same_bits, table
from ltc.ops import library, reference
from ltc.ops.contract import compute_dtype

SHAPES_DTYPES = [((2, 5), torch.float32), ((1, 3, 4, 5), torch.bfloat16), ((3, 7), torch.float64)]
BACKENDS = ["reference", pytest.param("triton", marks=needs_triton), pytest.param("cuda", marks=pytest.mark.gpu)]


def device_of(name: str) -> str:
    """Where backend ``name`` runs in this process (skips the extension where it is not built)."""
    return cases.backend(name).device


def step_inputs(shape, dtype, device, gen):
    """``x, model_out (cfg), hist, coefs, noise, x_prev, out`` of one step, all finite."""
    x, z, x_prev = (random(shape, dtype, device, gen) for _ in range(3))
    m = random((2 * shape[0], *shape[1:]), dtype, device, gen)
    hist = random((H, *shape), dtype, device, gen)
    return x, m, hist, table(dtype, device, gen), z, x_prev, torch.empty_like(x)


def opcheck(op, args) -> None:
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape, dtype", SHAPES_DTYPES, ids=lambda v: str(v).replace("torch.", ""))
def test_opcheck_passes_for_every_operator(name, shape, dtype):
    """Schema (what is written, nothing aliased), fake kernel, autograd registration and AOT
    dispatch with dynamic shapes, for every operator; host and device steps; reads up to 3 for a
    model step, 2 for an extrapolated one."""
    device = device_of(name)
    x, m, hist, coefs, z, x_prev, out = step_inputs(shape, dtype, device, generator("opcheck", shape, dtype))
    step = torch.tensor(5, device=device)
    ltc = torch.ops.ltc
    opcheck(ltc.model_step.default, (x, m, hist, coefs, None, 4, out, 3, True, z, name))
    opcheck(ltc.model_step.default, (x, m[:shape[0]], hist, coefs, step, 0, out, 1, False, None, name))
    opcheck(ltc.model_step_.default, (x, m, hist, coefs, step, 0, 3, True, z, name))
    word = torch.full((1,), 2 ** 31 - 1, dtype=torch.int32, device=device)
    opcheck(ltc.model_step.default, (x, m, hist, coefs, None, 4, out, 3, True, z, name, word))
    m[1] = float("nan")  # the word is written: 2 * 5 + 0
    opcheck(ltc.model_step_.default, (x, m, hist, coefs, step, 0, 3, True, None, name, word))
    opcheck(ltc.extrapolate_step.default, (x, x_prev, hist, coefs, None, 3, out, 2, name))
    opcheck(ltc.extrapolate_step_.default, (x, x_prev, hist, coefs, step, 0, 1, name))
    opcheck(ltc.transition_dots.default, (x, x_prev, z, name))


def test_every_operator_is_registered_with_its_writes_declared():
    written = {op: [a.name for a in getattr(torch.ops.ltc, op).default._schema.arguments
                    if a.alias_info is not None and a.alias_info.is_write] for op in library.OPERATORS}
    assert written == {"model_step": ["hist", "out", "finite"], "model_step_": ["x", "hist", "finite"],
                       "extrapolate_step": ["hist", "out"], "extrapolate_step_": ["x_prev", "hist"],
                       "transition_dots": []}


def test_fake_kernels_read_no_data():
    """Under FakeTensorMode (no data at all) the operators run: the step operators return nothing,
    transition_dots a [B, 2] tensor in the compute dtype."""
    with FakeTensorMode():
        for dtype in (torch.bfloat16, torch.float64):
            x, m, hist, coefs, z, x_prev, out = step_inputs((3, 4, 5), dtype, "cpu", None)
            assert torch.ops.ltc.model_step(x, m, hist, coefs, None, 2, out, 3, True, z, "reference") is None
            assert torch.ops.ltc.extrapolate_step_(x, x_prev, hist, coefs, None, 2, 2, "reference") is None
            dots = torch.ops.ltc.transition_dots(x, x_prev, out, "reference")
            assert dots.shape == (3, 2) and dots.dtype == compute_dtype(dtype)


# ---------------------------------------------------------------- aliasing

def test_a_written_argument_aliasing_another_is_refused_before_any_write():
    """out = x in the non-in-place model step, out = x_prev in the non-in-place extrapolated step,
    out inside an input, hist holding x or the noise: ValueError naming both arguments (and the
    in-place variant where there is one); hist and every buffer keep their bits."""
    gen = generator("aliasing")
    x, m, hist, coefs, z, x_prev, out = step_inputs((2, 6), torch.float32, "cpu", gen)
    ltc = torch.ops.ltc
    calls = [
        (lambda: ltc.model_step(x, m, hist, coefs, None, 1, x, 1, True, z, "reference"),
         r"model_step: out shares memory with x; .* call torch.ops.ltc.model_step_"),
        (lambda: ltc.model_step(x, m, hist, coefs, None, 1, m[2:], 1, True, z, "reference"),
         "model_step: out shares memory with model_out"),
        (lambda: ltc.model_step(hist[0], m, hist, coefs, None, 1, out, 1, True, z, "reference"),
         "model_step: hist shares memory with x"),
        (lambda: ltc.model_step_(x, m, hist, coefs, None, 1, 1, True, hist[3], "reference"),
         "model_step_: hist shares memory with noise"),
        (lambda: ltc.model_step_(x, m, hist, coefs, None, 1, 1, False, x, "reference"),
         "model_step_: x shares memory with noise"),
        (lambda: ltc.extrapolate_step(x, x_prev, hist, coefs, None, 1, x_prev, 1, "reference"),
         r"extrapolate_step: out shares memory with x_prev; .* call torch.ops.ltc.extrapolate_step_"),
        (lambda: ltc.extrapolate_step(x, x_prev, hist, coefs, None, 1, x, 1, "reference"),
         "extrapolate_step: out shares memory with x"),
        (lambda: ltc.extrapolate_step_(x_prev, x_prev, hist, coefs, None, 1, 1, "reference"),
         "extrapolate_step_: x_prev shares memory with x"),
    ]
    before = {name: t.clone() for name, t in dict(x=x, m=m, hist=hist, z=z, x_prev=x_prev).items()}
    for call, match in calls:
        with pytest.raises(ValueError, match=match):
            call()
    after = dict(x=x, m=m, hist=hist, z=z, x_prev=x_prev)
    assert all(same_bits(after[name], t) for name, t in before.items())


def test_an_unknown_or_unavailable_backend_is_refused_at_the_call():
    x, m, hist, coefs, z, x_prev, out = step_inputs((2, 3), torch.float32, "cpu", generator("backend"))
    hist_before = hist.clone()
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'fast'"):
        library.model_step(x, m, hist, coefs, 1, out, reads=1, cfg=True, backend="fast")
    with pytest.raises(ValueError, match="backend 'cuda' is not available"):
        library.extrapolate_step(x, x_prev, hist, coefs, 1, out, reads=1, backend="cuda")
    assert same_bits(hist, hist_before)


# ---------------------------------------------------------------- the contract's signatures

@pytest.mark.parametrize("name", BACKENDS)
def test_contract_functions_equal_the_backend_in_place_and_not(name):
    """out separate, out = x (model_step_), out = x_prev (extrapolate_step_): the bits of the
    backend's own functions, host and device steps."""
    device, module = device_of(name), cases.backend(name).module
    gen = generator("contract functions", name)
    for step in (3, torch.tensor(6, device=device)):
        x, m, hist, coefs, z, x_prev, out = step_inputs((2, 4, 5), torch.float32, device, gen)
        runs = []
        for ops, kw in ((library, dict(backend=name)), (module, {})):
            xs, hs, ps, o = x.clone(), hist.clone(), x_prev.clone(), torch.empty_like(x)
            ops.model_step(xs, m, hs, coefs, step, o, reads=3, cfg=True, noise=z, **kw)
            ops.model_step(o, m, hs, coefs, step, o, reads=2, cfg=True, **kw)          # out = x
            ops.extrapolate_step(o, ps, hs, coefs, step, ps, reads=2, **kw)           # out = x_prev
            ops.extrapolate_step(ps, o, hs, coefs, step, xs, reads=1, **kw)           # out separate
            runs.append((xs, hs, ps, o, ops.transition_dots(xs, ps, o, **kw)))
        for got, want in zip(*runs):
            assert same_bits(got, want)


# ---------------------------------------------------------------- torch.compile

def sampling_loop(ops, x, model_out, hist, coefs, x_prev, buf, steps, **kw):
    """A user's loop over the ops: guided model steps into a double buffer, one in place with a
    device step, extrapolated steps in place into x_prev and into a separate buffer, the dots."""
    for i in range(steps):
        ops.model_step(x, model_out, hist, coefs, i, buf, reads=min(i, 3), cfg=True, **kw)
        x, buf = buf, x
    ops.model_step(x, model_out, hist, coefs, torch.tensor(steps, device=x.device), x, reads=3, cfg=True, **kw)
    ops.extrapolate_step(x, x_prev, hist, coefs, steps + 1, x_prev, reads=2, **kw)
    ops.extrapolate_step(x_prev, x, hist, coefs, steps + 2, buf, reads=1, **kw)
    return ops.transition_dots(buf, x_prev, x, **kw)


def compile_and_compare(backend: str, compiler: str) -> None:
    """The loop compiled with ``fullgraph=True`` (a graph break raises) gives the eager reference's
    results, and the graph Dynamo captured calls the ``torch.ops.ltc`` operators."""
    device = device_of(backend)
    gen = generator("compile", backend, compiler)
    x, m, hist, coefs, _, x_prev, buf = step_inputs((2, 3, 5), torch.float32, device, gen)
    eager = [t.clone() for t in (x, m, hist, coefs, x_prev, buf)]
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(compiler)(gm, example_inputs)

    torch._dynamo.reset()
    loop = torch.compile(lambda *a: sampling_loop(library, *a, steps=4, backend=backend), fullgraph=True,
                         backend=capture)
    got = loop(x, m, hist, coefs, x_prev, buf)
    want = sampling_loop(reference, *eager, steps=4)
    assert len(graphs) == 1
    called = {str(n.target).removesuffix(".default") for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert {f"ltc.{op}" for op in library.OPERATORS} <= called, called
    tol = dict(rtol=1e-6, atol=1e-6) if backend != "reference" else dict(rtol=0, atol=0)
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip((x, m, hist, coefs, x_prev, buf), eager):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("name", ["reference", pytest.param("triton", marks=needs_triton)])
def test_a_loop_of_the_operators_compiles_without_graph_breaks_to_the_eager_results(name):
    """AOT with functionalization of the written arguments (aot_eager); Triton where it runs here
    (its interpreter on the CPU)."""
    compile_and_compare(name, "aot_eager")


@pytest.mark.slow
def test_a_loop_of_the_operators_compiles_with_inductor():
    """The same loop through Inductor (C++ code generation on the CPU, about 20 s)."""
    compile_and_compare("reference", "inductor")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_a_loop_of_the_compiled_backends_compiles_without_graph_breaks_on_a_gpu(name):
    cases.cuda_backend_or_skip(name)
    compile_and_compare(name, "inductor")
