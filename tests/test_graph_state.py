"""What a captured walk depends on, beyond the plan: the tensors its models read, the ambient
numerics, its memory pool, its thread, and the state a failed capture leaves behind.

CPU tests use :class:`ltc.executor.capture.RecordedGraphs`, whose replays read the tensors they
recorded by identity, as a CUDA graph reads addresses: a replay with stale weights differs from
eager sampling.  The GPU tests run the same properties on real CUDA graphs (``bench/gpu_check.py``).
"""
from __future__ import annotations

import functools
import threading

import pytest
import torch

import ltc
from ltc.executor import graph as graphs
from ltc.executor.capture import CudaGraphs, RecordedGraphs

SCHEDULE = ltc.Schedule.vp("linear")
SHAPE = (3, 8)
CUDA = torch.cuda.is_available()


def noise(seed=0, device="cpu"):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(device)


def linear(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 8)


@pytest.fixture(autouse=True)
def recorded():
    graphs.clear_cache()
    with graphs.use_backend(RecordedGraphs()) as backend:
        yield backend
    graphs.clear_cache()


def draw(fn, graph, seed=0):
    model = fn if isinstance(fn, ltc.Model) else ltc.Model(fn, "eps", name="net")
    x, info = ltc.sample(model, SCHEDULE, steps=5, noise=noise(seed), graph=graph, progress=False, return_info=True)
    return x, info.executor


def assert_replay_follows(fn, replace):
    """Capture ``fn``, replace what it reads with ``replace()``, and check that the walk is captured
    again and equals eager sampling with the new weights (a stale replay would give the old result)."""
    backend = graphs._backend
    with torch.no_grad():
        before, executor = draw(fn, True)
        assert executor == "graph-whole"
        replace()
        after, _ = draw(fn, True)
        expected, _ = draw(fn, False)
    assert not torch.equal(before, expected), "the replacement must change the samples"
    assert torch.equal(after, expected) and backend.captures == 2


class Holder:
    def __init__(self, net):
        self.inner = type("Inner", (), {})()
        self.inner.net = net

    def __call__(self, x, t):
        return self.inner.net(x)


def test_a_lambda_over_a_module_sees_load_state_dict_with_assign():
    net = linear(0)
    assert_replay_follows(lambda x, t: net(x), lambda: net.load_state_dict(linear(1).state_dict(), assign=True))


def test_a_partial_over_a_module_sees_it_moved():
    net = linear(0)
    fn = functools.partial(lambda module, x, t: module(x), net)
    def replace():  # new storage (a CUDA graph would read the freed old one), then new values
        net.to(torch.float64).to(torch.float32)
        net.weight.mul_(0.5)
    assert_replay_follows(fn, replace)


def test_a_module_two_attributes_deep_is_found():
    holder = Holder(linear(0))

    def replace():
        holder.inner.net = linear(2)
    assert_replay_follows(holder, replace)


def test_a_tensor_rebound_in_a_closure_is_found():
    weight = torch.randn(8, 8)

    def fn(x, t):
        return x @ weight

    def replace():
        nonlocal weight
        weight = torch.randn(8, 8)
    assert_replay_follows(fn, replace)


def test_a_wrapped_function_is_followed():
    net = linear(0)

    @functools.wraps(net.forward)
    def fn(x, t):
        return fn.__wrapped__(x)
    assert_replay_follows(fn, lambda: net.load_state_dict(linear(3).state_dict(), assign=True))


def test_weights_changed_in_place_are_read_by_the_replay(recorded):
    net = linear(0)
    fn = lambda x, t: net(x)  # noqa: E731
    with torch.no_grad():
        draw(fn, True)
        net.weight.mul_(0.5)
        after, executor = draw(fn, True)
        expected, _ = draw(fn, False)
    assert executor == "graph-whole" and recorded.captures == 1 and torch.equal(after, expected)


def test_a_captured_walk_holds_the_tensors_its_graphs_read():
    net = linear(0)
    with torch.no_grad():
        draw(lambda x, t: net(x), True)
    (captured,) = graphs._cache.values()
    assert any(t is net.weight for t in captured.held) and any(t is net.bias for t in captured.held)


def test_autocast_is_part_of_the_key(recorded):
    net = linear(0)
    fn = lambda x, t: net(x).float()  # noqa: E731
    with torch.no_grad():
        plain, _ = draw(fn, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, executor = draw(fn, True)
            expected, _ = draw(fn, False)
    assert recorded.captures == 2 and executor == "graph-whole"
    assert torch.equal(mixed, expected) and not torch.equal(mixed, plain)


def test_every_walk_has_its_own_pool_and_per_step_graphs_share_it(recorded):
    nets = [linear(0), linear(1)]
    with torch.no_grad():
        draw(lambda x, t: nets[0](x), "whole")
        draw(lambda x, t: nets[1](x), "step")
    whole, *steps = recorded.pools
    assert steps and all(p is steps[0] for p in steps) and whole is not steps[0]


def test_two_threads_replay_different_walks_correctly():
    nets = [linear(0), linear(1)]
    fns = [ltc.Model(lambda x, t, n=n: n(x), "eps", name=f"net{k}") for k, n in enumerate(nets)]
    with torch.no_grad():
        expected = [draw(fn, False, seed=k)[0] for k, fn in enumerate(fns)]
        for k, fn in enumerate(fns):
            draw(fn, True, seed=k)
    results, errors = {}, []

    def worker(k):
        try:
            with torch.no_grad():
                results[k] = [draw(fns[k], True, seed=k)[0] for _ in range(20)]
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for k in range(2):
        assert all(torch.equal(x, expected[k]) for x in results[k])


def test_sampling_keeps_no_autograd_graph_for_trainable_weights():
    net = linear(0)
    model = ltc.Model(lambda x, t: net(x), "eps", name="net")
    x = ltc.sample(model, SCHEDULE, steps=4, noise=noise(), graph=False, progress=False)
    assert not x.requires_grad and x.grad_fn is None
    st = ltc.Stepper(SCHEDULE, steps=4, noise=noise(), predictions=model)
    while not st.done:
        inp, t, _ = st.request()
        st.step(model(inp, t))
    assert not st.x.requires_grad and torch.equal(st.x, x)


# -- GPU (real CUDA graphs) ---------------------------------------------------------------------

class HostSync(torch.nn.Module):
    def forward(self, x, t):
        if float(x.sum()) > 1e30:  # reads a device value on the host: not capturable
            return x
        return torch.tanh(x)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("own_generator", [False, True])
def test_a_failed_capture_leaves_the_cuda_generators_usable(own_generator):
    """graph='auto' + a stochastic sampler + an uncapturable model: the fallback is eager, and eager
    noise can be drawn afterwards (the generators left capture mode)."""
    with graphs.use_backend(CudaGraphs()):
        graphs.clear_cache()
        model = ltc.Model(HostSync(), "eps", name="host_sync")
        gen = torch.Generator(device="cuda").manual_seed(0) if own_generator else None
        run = dict(sampler=ltc.samplers.DDIM(eta=1.0), steps=4, noise=noise(device="cuda"), progress=False)
        ltc.sample(model, SCHEDULE, generator=gen, graph="auto", **run)  # first call: eager
        with pytest.warns(graphs.GraphFallbackWarning):
            ltc.sample(model, SCHEDULE, generator=gen, graph="auto", **run)
        torch.randn(16, device="cuda")
        torch.randn(16, device="cuda", generator=gen)
        ltc.sample(model, SCHEDULE, generator=gen, graph=False, **run)
        torch.cuda.synchronize()
        graphs.clear_cache()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_replay_follows_replaced_weights():
    net = linear(0).cuda()
    fn = ltc.Model(lambda x, t: net(x), "eps", name="net")
    with graphs.use_backend(CudaGraphs()), torch.no_grad():
        graphs.clear_cache()
        run = dict(steps=5, noise=noise(device="cuda"), progress=False)
        ltc.sample(fn, SCHEDULE, graph=True, **run)
        net.load_state_dict(linear(1).cuda().state_dict(), assign=True)
        torch.testing.assert_close(ltc.sample(fn, SCHEDULE, graph=True, **run),
                                   ltc.sample(fn, SCHEDULE, graph=False, **run), rtol=1e-5, atol=1e-5)
        graphs.clear_cache()


def test_cached_memory_is_released_once_before_each_walk_is_captured(recorded):
    """The warm-up's cached blocks go back to the device before the first graph of a walk is
    captured (on CUDA: gc.collect + empty_cache), once per walk, not once per per-step graph."""
    nets = [linear(0), linear(1)]
    with torch.no_grad():
        draw(lambda x, t: nets[0](x), "whole")
        draw(lambda x, t: nets[1](x), "step")
    assert recorded.prepared == 2 and recorded.captures > 2
