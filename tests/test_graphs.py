"""Graph executor: whole and per-step replays equal the eager walk, cache keying, fallbacks, errors.

CPU tests use :class:`ltc.executor.capture.RecordedGraphs`, which records the aten operations of a capture
and replays exactly those (Python decisions frozen, static tensors read at replay time, host syncs
refused), as a CUDA graph would.  GPU tests (marked) use real CUDA graphs.
"""
import gc
import warnings

import numpy as np
import pytest
import torch

import ltc
from ltc.ops.contract import HISTORY_SLOTS
from ltc.executor import graph as graphs
from ltc.executor.cache import GraphCache, Identity, identify
from ltc.executor.graph import GraphCaptureError, GraphFallbackWarning, GraphTooLargeError, RecordedGraphs
from ltc.policies import LTC, Full, TStitch
from ltc.samplers import DDIM

SHAPE = (3, 2, 4)
CLASSES = 4


class TinyNet(torch.nn.Module):
    """Class-conditional toy denoiser: ``tanh(x W + 1e-3 t) + 0.1 E[y]`` (null class under CFG)."""

    prediction = "eps"
    half_batch_kwargs = ("y",)  # B labels under guidance: the conditional half (ltc.models.half_batch_kwargs)

    def __init__(self, seed: int, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g) / dim ** 0.5)
        self.emb = torch.nn.Parameter(torch.randn(CLASSES + 1, dim, generator=g))

    def forward(self, x, t, y=None):
        b = x.shape[0]
        h = torch.tanh(x.reshape(b, -1) @ self.w.to(x.dtype) + 1e-3 * t[:, None].to(x.dtype))
        if y is not None:
            if 2 * y.shape[0] == b:
                y = torch.cat([torch.full_like(y, CLASSES), y])
            h = h + 0.1 * self.emb[y].to(x.dtype)
        return h.reshape(x.shape)


@pytest.fixture(autouse=True)
def fresh_cache():
    graphs.clear_cache()
    yield
    graphs.clear_cache()


@pytest.fixture
def recorded():
    with graphs.use_backend(RecordedGraphs()) as backend:
        yield backend


def noise_of(seed=0, shape=SHAPE, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def draw(models, graph, policy=None, *, seed=0, labels=None, schedule=None, steps=13, **kw):
    """One ``ltc.sample`` call; 13 steps, so per-step graphs are replayed at steps other than
    the one they were captured at (signatures repeat every 6 steps)."""
    schedule = schedule or ltc.Schedule.vp("linear", spacing="trailing")
    kwargs = {"y": labels} if labels is not None else None
    kw.setdefault("noise", noise_of(seed))
    return ltc.sample(models, schedule, policy, steps=steps, model_kwargs=kwargs, progress=False,
                      return_info=True, graph=graph, **kw)


POLICIES = {
    "full": (1, lambda: Full()),
    "ltc": (1, lambda: LTC()),
    "tstitch": (2, lambda: TStitch(0.4)),
    "tstitch+ltc": (2, lambda: LTC(base=TStitch(0.4))),
}


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_1m", "dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("guidance", [None, 2.0])
def test_whole_and_step_replays_equal_the_eager_walk(recorded, sampler, policy, guidance):
    n_models, make = POLICIES[policy]
    models = [TinyNet(seed) for seed in range(n_models)]
    labels = torch.tensor([0, 1, 3])
    eager, info = draw(models, False, make(), sampler=sampler, labels=labels, guidance_scale=guidance)
    assert info.executor == "eager"
    for mode in ("whole", "step"):
        x, info = draw(models, mode, make(), sampler=sampler, labels=labels, guidance_scale=guidance)
        assert info.executor == f"graph-{mode}"
        assert torch.equal(x, eager)


def test_flow_euler_replays_equal_the_eager_walk(recorded):
    model = ltc.Model(TinyNet(0), "flow")
    schedule = ltc.Schedule.flow(shift=3.0)
    eager, _ = draw(model, False, sampler="euler", schedule=schedule)
    for mode in ("whole", "step"):
        x, _ = draw(model, mode, sampler="euler", schedule=schedule)
        assert torch.equal(x, eager)


def test_auto_samples_a_new_key_eagerly_then_captures_once_and_replays(recorded):
    model = TinyNet(0)
    _, info = draw(model, "auto")
    assert info.executor == "eager" and recorded.captures == 0 and "second call" in info.extra["graph"]
    _, info = draw(model, "auto")
    assert info.executor == "graph-whole" and recorded.captures == 1
    x, info = draw(model, "auto", seed=1)
    assert info.executor == "graph-whole" and recorded.captures == 1 and graphs.cache_size() == 1
    assert torch.equal(x, draw(model, False, seed=1)[0])


def test_auto_never_captures_a_fresh_callable_per_call(recorded):
    net = TinyNet(0)
    for _ in range(3):
        _, info = draw(ltc.Model(lambda x, t: net(x, t), "eps"), "auto")
        assert info.executor == "eager"
    assert recorded.captures == 0


def test_a_replay_reads_new_noise_and_new_label_tensors(recorded):
    model = TinyNet(0)
    draw(model, True, labels=torch.tensor([0, 1, 2]), guidance_scale=3.0)
    x, _ = draw(model, True, seed=5, labels=torch.tensor([3, 3, 1]), guidance_scale=3.0)
    eager, _ = draw(model, False, seed=5, labels=torch.tensor([3, 3, 1]), guidance_scale=3.0)
    assert recorded.captures == 1
    assert torch.equal(x, eager)


def test_per_step_mode_captures_one_graph_per_step_signature(recorded):
    # DDIM reads no history: signatures differ only by (i % 2, i % H), H = 4: 4 of them for 8 steps
    _, info = draw(TinyNet(0), "step", sampler="ddim", steps=8)
    assert recorded.captures == 4 and info.executor == "graph-step"


@pytest.mark.parametrize("change", ["shape", "dtype", "steps", "model", "guidance", "kwargs"])
def test_a_new_key_is_captured_again(recorded, change):
    model = TinyNet(0)
    base = dict(labels=torch.tensor([0, 1, 2]))
    draw(model, True, **base)
    changed = dict(base)
    if change == "shape":
        changed["noise"] = noise_of(shape=(5, 2, 4))
        changed["labels"] = torch.tensor([0, 1, 2, 3, 0])
    elif change == "dtype":
        changed["noise"] = noise_of(dtype=torch.float64)
    elif change == "steps":
        changed["steps"] = 9
    elif change == "model":
        model = TinyNet(0)
    elif change == "guidance":
        changed["guidance_scale"] = 1.5
    elif change == "kwargs":
        changed["labels"] = None
    x, info = draw(model, True, **changed)
    assert recorded.captures == 2 and graphs.cache_size() == 2
    assert torch.equal(x, draw(model, False, **changed)[0])


def test_clear_cache_frees_every_captured_walk(recorded):
    model = TinyNet(0)
    draw(model, True)
    assert graphs.cache_size() == 1
    graphs.clear_cache()
    assert graphs.cache_size() == 0
    draw(model, True)
    assert recorded.captures == 2


def test_a_bound_method_is_the_same_model_at_every_call(recorded):
    net = TinyNet(0)
    fn = ltc.Model(net.forward, "eps", "net")
    draw(fn, True)
    draw(ltc.Model(net.forward, "eps", "net"), True)
    assert recorded.captures == 1


def test_replaced_weights_are_captured_again(recorded):
    net = TinyNet(0)
    draw(net, True)
    with torch.no_grad():
        net.w.data = net.w.data * 2  # a new tensor: the captured graph would read the old address
    x, _ = draw(net, True)
    assert recorded.captures == 2
    assert torch.equal(x, draw(net, False)[0])


def test_an_entry_of_a_dead_object_is_never_reused():
    class Fn:
        def __call__(self, x, t):
            return x

    old, new = Fn(), Fn()
    cache, key = GraphCache(capacity=2), ("plan",)
    stored = identify([old])
    cache.put(key, stored, "graph")
    assert cache.get(key, identify([old])) == "graph"
    del old
    gc.collect()
    reused_id = Identity(stored.key, identify([new]).refs, identify([new]).weights)  # as if id() were reused
    assert cache.get(key, reused_id) is None and len(cache) == 0


def test_the_cache_evicts_the_least_recently_used_entry():
    cache, fn = GraphCache(capacity=2), TinyNet(0)
    ident = identify([fn])
    for k in ("a", "b"):
        cache.put((k,), ident, k)
    cache.get(("a",), ident)
    cache.put(("c",), ident, "c")
    assert cache.get(("b",), ident) is None and cache.get(("a",), ident) == "a" and len(cache) == 2


class Syncing(TinyNet):
    name = "syncing"

    def forward(self, x, t, y=None):
        if float(t[0]) > 1e9:  # a host sync: reads a device value in Python
            return x
        return super().forward(x, t, y)


def test_auto_falls_back_to_eager_with_a_warning_naming_the_model(recorded):
    model = Syncing(0)
    draw(model, "auto")  # the first call of a key is eager: nothing is captured yet
    with pytest.warns(GraphFallbackWarning, match="model 'syncing' at step 0.*host"):
        x, info = draw(model, "auto")
    assert info.executor == "eager" and "host" in info.extra["graph"]
    assert torch.equal(x, draw(model, False)[0])


def test_a_failed_capture_is_remembered(recorded):
    model = Syncing(0)
    with pytest.raises(GraphCaptureError):
        draw(model, True)
    warmups = recorded.warmups
    with pytest.warns(GraphFallbackWarning):
        draw(model, "auto")
    assert recorded.warmups == warmups


def test_graph_true_raises_a_capture_error_naming_the_cause(recorded):
    with pytest.raises(GraphCaptureError, match="model 'syncing' at step 0.*synchronises with the host"):
        draw(Syncing(0), True)


def test_a_model_error_at_warm_up_is_raised_as_is(recorded):
    def wrong_shape(x, t):
        return x[:, :1]
    with pytest.raises(ValueError, match="returned shape"):
        draw(ltc.Model(wrong_shape, "eps"), True)


def test_auto_uses_per_step_graphs_when_the_whole_walk_is_too_large():
    with graphs.use_backend(RecordedGraphs(max_ops=150)):
        model = TinyNet(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            draw(model, "auto")
            x, info = draw(model, "auto")
        assert info.executor == "graph-step" and "out of memory" in info.extra["graph"]
        assert torch.equal(x, draw(model, False)[0])
        with pytest.raises(GraphTooLargeError, match="out of memory"):
            draw(TinyNet(1), "whole")


def test_unhashable_model_kwargs_fall_back_or_raise(recorded):
    def fn(x, t, scale=None):
        return x * float(scale["factor"].flat[0])
    model = ltc.Model(fn, "eps")
    schedule = ltc.Schedule.vp("linear")
    run = dict(steps=4, noise=noise_of(), model_kwargs={"scale": {"factor": np.array([0.5])}}, progress=False,
               return_info=True)
    with pytest.warns(GraphFallbackWarning, match="model_kwargs\\['scale'\\] holds a ndarray"):
        _, info = ltc.sample(model, schedule, graph="auto", **run)
    assert info.executor == "eager"
    with pytest.raises(GraphCaptureError, match="model_kwargs\\['scale'\\]"):
        ltc.sample(model, schedule, graph=True, **run)


def test_nested_model_kwargs_are_static_buffers(recorded):
    """Dicts and lists of tensors (e.g. SDXL's ``added_cond_kwargs``) are copied into static buffers:
    the replay reads this call's values, and equals eager sampling."""
    def fn(x, t, added=None, scales=(1.0,)):
        return x * added["text_embeds"][:, None] + added["time_ids"][0][:, None] * scales[0]
    model = ltc.Model(fn, "eps")
    schedule = ltc.Schedule.vp("linear")

    def kwargs(seed):
        g = torch.Generator().manual_seed(seed)
        return {"added": {"text_embeds": torch.rand(3, 4, generator=g), "time_ids": [torch.rand(3, 4, generator=g)]},
                "scales": (0.5,)}

    run = dict(steps=4, noise=noise_of(), progress=False, return_info=True)
    for seed in range(3):
        x, info = ltc.sample(model, schedule, graph=True, model_kwargs=kwargs(seed), **run)
        assert info.executor == "graph-whole"
        assert torch.equal(x, ltc.sample(model, schedule, graph=False, model_kwargs=kwargs(seed), **run)[0])
    assert recorded.captures == 1


class NaNLate(TinyNet):
    """Finite output at model times above 400, NaN below (no host sync: torch.where)."""

    name = "nan_late"

    def forward(self, x, t, y=None):
        out = super().forward(x, t, y)
        return torch.where(t[:, None, None] < 400, torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("mode", ["whole", "step"])
def test_a_non_finite_output_is_reported_at_its_first_step(recorded, mode):
    model = NaNLate(0)
    with pytest.raises(ltc.NonFiniteError) as eager_err:
        draw(model, False, check_finite="end")
    with pytest.raises(ltc.NonFiniteError) as graph_err:
        draw(model, mode)
    assert str(graph_err.value) == str(eager_err.value)
    assert "nan_late" in str(graph_err.value)
    x, _ = draw(model, mode, check_finite="off")
    assert torch.isnan(x).any()


@pytest.mark.parametrize("mode", ["whole", "step"])
def test_stochastic_replays_draw_the_noise_eager_would_draw(recorded, mode):
    model, sampler = TinyNet(0), DDIM(eta=1.0)
    gen_graph, gen_eager = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for seed in (0, 1):  # the second call is a replay: it must draw fresh noise
        x, info = draw(model, mode, sampler=sampler, generator=gen_graph, seed=seed)
        eager, _ = draw(model, False, sampler=sampler, generator=gen_eager, seed=seed)
        assert torch.equal(x, eager)
    assert torch.equal(torch.rand(3, generator=gen_graph), torch.rand(3, generator=gen_eager))
    plan = info.plan
    signatures = {(plan.models[i], plan.history_reads[i], plan.noisy[i], i % 2, i % HISTORY_SLOTS)
                  for i in range(plan.steps)}
    assert recorded.captures == (1 if mode == "whole" else len(signatures))


def test_the_recorded_backend_refuses_step_ops_it_cannot_see(recorded):
    with pytest.raises(GraphCaptureError, match="cannot record the 'triton' step ops"):
        draw(TinyNet(0), True, backend="triton")


def test_a_host_generator_is_refused_for_a_cuda_state():
    plan = ltc.compile_plan(ltc.Schedule.vp("linear").discretize(4), DDIM(eta=1.0), Full(), ["eps"])
    with pytest.raises(GraphCaptureError, match="generator on cpu.*torch.Generator\\(device='cuda'\\)"):
        graphs.graph_generator(plan, torch.device("cuda"), torch.Generator())


def test_graph_true_on_the_cpu_is_a_value_error():
    with pytest.raises(ValueError, match="graph=True is not possible: no graph capture for cpu.*CUDA"):
        draw(TinyNet(0), True)


def test_auto_on_the_cpu_samples_eagerly_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = draw(TinyNet(0), "auto")
    assert info.executor == "eager" and "cpu" in info.extra["graph"]


@pytest.mark.parametrize("graph", ["yes", 1, None, "Whole"])
def test_graph_must_be_a_known_option(graph):
    with pytest.raises(ValueError, match="graph must be one of"):
        draw(TinyNet(0), graph)


def test_a_callback_forbids_capture(recorded):
    seen = []
    with pytest.raises(ValueError, match="callback"):
        draw(TinyNet(0), True, callback=seen.append)
    _, info = draw(TinyNet(0), "auto", callback=seen.append)
    assert info.executor == "eager" and len(seen) == 13 and "callback" in info.extra["graph"]


def test_per_step_finite_checks_forbid_capture(recorded):
    with pytest.raises(ValueError, match="check_finite='step'"):
        draw(TinyNet(0), "step", check_finite="step")
    _, info = draw(TinyNet(0), "auto", check_finite="step")
    assert info.executor == "eager"


# -- GPU -------------------------------------------------------------------------------------

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


class ConvNet(torch.nn.Module):
    """Small class-conditional conv denoiser for the GPU checks (cuDNN / cuBLAS kernels)."""

    prediction = "eps"

    def __init__(self, seed: int, channels: int = 4, width: int = 32):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.emb = torch.nn.Embedding(CLASSES + 1, width)
        self.out = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t, y=None):
        h = self.inp(x) + 1e-3 * t[:, None, None, None].to(x.dtype)
        if y is not None:
            if 2 * y.shape[0] == x.shape[0]:
                y = torch.cat([torch.full_like(y, CLASSES), y])
            h = h + self.emb(y)[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


def gpu_draw(models, graph, policy, dtype, *, sampler="dpmpp_2m", guidance=2.0, seed=0, batch=2, generator=None):
    noise = noise_of(seed, (batch, 4, 16, 16), dtype, "cuda")
    labels = torch.arange(batch, device="cuda") % CLASSES
    return ltc.sample(models, ltc.Schedule.vp("linear", spacing="trailing"), policy, sampler=sampler, steps=12,
                      noise=noise, model_kwargs={"y": labels}, guidance_scale=guidance, progress=False,
                      return_info=True, graph=graph, generator=generator)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("guidance", [None, 2.0])
def test_gpu_graph_replay_equals_eager(dtype, sampler, policy, guidance):
    n_models, make = POLICIES[policy]
    models = [ConvNet(seed).cuda().to(dtype) for seed in range(n_models)]
    eager, _ = gpu_draw(models, False, make(), dtype, sampler=sampler, guidance=guidance)
    for mode in ("whole", "step"):
        for seed in (0, 1):  # capture, then a replay with new noise
            x, info = gpu_draw(models, mode, make(), dtype, sampler=sampler, guidance=guidance, seed=seed)
            ref = eager if seed == 0 else gpu_draw(models, False, make(), dtype, sampler=sampler,
                                                    guidance=guidance, seed=1)[0]
            assert info.executor == f"graph-{mode}"
            torch.testing.assert_close(x, ref, **TOLERANCE[dtype])


@pytest.mark.gpu
def test_gpu_stochastic_replay_equals_eager_with_a_cuda_generator():
    model = ConvNet(0).cuda()
    sampler = DDIM(eta=1.0)
    g1, g2 = torch.Generator(device="cuda").manual_seed(3), torch.Generator(device="cuda").manual_seed(3)
    for seed in (0, 1):
        x, info = gpu_draw(model, True, Full(), torch.float32, sampler=sampler, generator=g1, seed=seed)
        ref, _ = gpu_draw(model, False, Full(), torch.float32, sampler=sampler, generator=g2, seed=seed)
        assert info.executor == "graph-whole"
        torch.testing.assert_close(x, ref, **TOLERANCE[torch.float32])


@pytest.mark.gpu
def test_gpu_a_thousand_replays_do_not_grow_memory():
    model = ConvNet(0).cuda()
    for _ in range(3):
        gpu_draw(model, True, Full(), torch.float32)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for seed in range(1000):
        gpu_draw(model, True, Full(), torch.float32, seed=seed % 7)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before and graphs.cache_size() == 1


@pytest.mark.gpu
def test_gpu_a_new_shape_is_captured_again():
    model = ConvNet(0).cuda()
    for batch in (2, 3):
        x, info = gpu_draw(model, True, Full(), torch.float32, batch=batch)
        ref, _ = gpu_draw(model, False, Full(), torch.float32, batch=batch)
        assert x.shape[0] == batch and info.executor == "graph-whole"
        torch.testing.assert_close(x, ref, **TOLERANCE[torch.float32])
    assert graphs.cache_size() == 2


@pytest.mark.gpu
def test_gpu_a_syncing_model_falls_back_and_capture_still_works_after():
    class ItemNet(ConvNet):
        name = "item_net"

        def forward(self, x, t, y=None):
            return super().forward(x, t, y) * (1.0 if t[0].item() > -10 else 0.0)

    bad = ItemNet(0).cuda()
    gpu_draw(bad, "auto", Full(), torch.float32)  # a new key: eager, nothing captured
    with pytest.warns(GraphFallbackWarning, match="item_net"):
        x, info = gpu_draw(bad, "auto", Full(), torch.float32)
    assert info.executor == "eager"
    with pytest.raises(GraphCaptureError, match="item_net"):
        gpu_draw(ItemNet(1).cuda(), True, Full(), torch.float32)
    good = ConvNet(0).cuda()
    x, info = gpu_draw(good, True, Full(), torch.float32)
    torch.testing.assert_close(x, gpu_draw(good, False, Full(), torch.float32)[0], **TOLERANCE[torch.float32])
    # a failed capture with a registered generator must leave that generator usable eagerly
    gen, noisy = torch.Generator(device="cuda").manual_seed(0), ItemNet(2).cuda()
    with pytest.raises(GraphCaptureError, match="item_net"):
        gpu_draw(noisy, True, Full(), torch.float32, sampler=DDIM(eta=1.0), generator=gen)
    x, info = gpu_draw(noisy, False, Full(), torch.float32, sampler=DDIM(eta=1.0), generator=gen)
    assert info.executor == "eager" and torch.isfinite(x).all()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["whole", "step"])
def test_gpu_a_cached_replay_makes_no_host_synchronisation(mode):
    model = ltc.Model(ConvNet(0).cuda(), "eps", "conv")
    plan = ltc.compile_plan(ltc.Schedule.vp("linear").discretize(12), ltc.samplers.get_sampler("dpmpp_2m"),
                            LTC(), ["eps"], 2.0)
    name, ops = ltc.ops.resolve(None, torch.device("cuda"))
    noise = noise_of(0, (2, 4, 16, 16), torch.float32, "cuda")
    kwargs = {"y": torch.tensor([0, 1], device="cuda")}
    run = dict(graph=mode, ops=ops, ops_name=name, model_kwargs=kwargs, check_finite="off")
    graphs.run(plan, [model], noise, **run)  # capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, executor, _ = graphs.run(plan, [model], noise, **run)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert executor == f"graph-{mode}" and x.shape == noise.shape
