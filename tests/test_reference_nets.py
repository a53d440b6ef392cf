"""Reference networks (timing models): standard DiT sizes, the model contract, capture safety."""
import pytest
import torch

import ltc
from ltc.executor import graph as graphs
from ltc.zoo.reference_nets import DIT_SIZES, DiT, small_unet

PAPER_PARAMETERS = {"S": 33.0e6, "B": 130.5e6, "L": 458.0e6}  # DiT paper, Table 1 (patch 2)


def parameters_of(size: str) -> int:
    with torch.device("meta"):  # shapes only: no memory, no time
        net = DiT(*DIT_SIZES[size])
    return sum(p.numel() for p in net.parameters()) + net.pos.numel()


def test_dit_xl_2_has_the_parameter_count_of_the_reference_code():
    assert parameters_of("XL") == 675_129_632


@pytest.mark.parametrize("size", list(PAPER_PARAMETERS))
def test_dit_sizes_match_the_paper(size):
    assert parameters_of(size) == pytest.approx(PAPER_PARAMETERS[size], rel=0.005)


def tiny_dit():
    return DiT(width=32, depth=2, heads=2, name="tiny-dit")


def test_dit_returns_eps_of_the_latent_shape_and_uses_the_labels():
    net = ltc.zoo.reference_nets.randomize(tiny_dit(), seed=0)
    x, t = torch.randn(4, 4, 32, 32), torch.full((4,), 500.0)
    out = net(x, t, y=torch.tensor([1, 2, 3, 4]))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert not torch.equal(out, net(x, t, y=torch.tensor([1, 2, 3, 5])))
    cfg = net(x, t, y=torch.tensor([3, 4]))  # [x; x] batch: null classes first, then the labels
    assert torch.equal(cfg, net(x, t, y=torch.tensor([1000, 1000, 3, 4])))


def test_dit_rejects_labels_of_the_wrong_shape():
    with pytest.raises(ValueError, match="y must have shape"):
        tiny_dit()(torch.randn(4, 4, 32, 32), torch.zeros(4), y=torch.tensor([1, 2, 3]))


def test_random_weights_are_reproducible_and_not_zero():
    a, b = ltc.zoo.reference_nets.randomize(tiny_dit(), 3), ltc.zoo.reference_nets.randomize(tiny_dit(), 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.final.weight.abs().sum() > 0 and a.blocks[0].ada.weight.abs().sum() > 0


def test_small_unet_runs_in_bfloat16():
    net = small_unet(channels=16, dtype=torch.bfloat16)
    x = torch.randn(2, 4, 32, 32, dtype=torch.bfloat16)
    assert net(x, torch.full((2,), 10.0), y=torch.tensor([1, 2])).dtype == torch.bfloat16


@pytest.mark.parametrize("make", [lambda: ltc.zoo.reference_nets.randomize(tiny_dit(), 0),
                                  lambda: small_unet(channels=8)], ids=["dit", "unet"])
def test_reference_nets_capture_without_host_syncs(make):
    net = make()
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    run = dict(steps=3, noise=noise, model_kwargs={"y": torch.tensor([7])}, guidance_scale=2.0,
               progress=False, return_info=True)
    schedule = ltc.Schedule.vp("linear")
    graphs.clear_cache()
    with graphs.use_backend(graphs.RecordedGraphs()):
        x, info = ltc.sample(net, schedule, graph=True, **run)
    graphs.clear_cache()
    assert info.executor == "graph-whole"
    assert torch.equal(x, ltc.sample(net, schedule, graph=False, **run)[0])
