"""The reference step ops: a device step index gives the same result as a host one, and the ops
trace under torch.compile without graph breaks (both matter for graph capture)."""
import pytest
import torch

from ltc.ops import reference as R


@pytest.mark.parametrize("reads", [0, 1, 2])
@pytest.mark.parametrize("step", [0, 1, 4])
def test_device_step_index_equals_host_step_index(reads, step):
    g = torch.Generator().manual_seed(10 * step + reads)
    x, m = torch.randn(3, 5, generator=g), torch.randn(6, 5, generator=g)
    coefs = torch.randn(6, 14, generator=g)
    for op in ("model", "extrapolate"):
        h_int, out_int = torch.randn(3, 3, 5, generator=g), torch.full((3, 5), float("nan"))
        h_dev, out_dev = h_int.clone(), out_int.clone()
        for s, h, out in ((step, h_int, out_int), (torch.tensor(step), h_dev, out_dev)):
            if op == "model":
                R.model_step(x, m, h, coefs, s, out, reads=reads, cfg=True)
            else:
                R.extrapolate_step(x, m[:3], h, coefs, s, out, reads=reads)
        assert torch.equal(out_int, out_dev) and torch.equal(h_int, h_dev)
        assert not out_int.isnan().any()


def test_reference_ops_trace_without_graph_breaks():
    step = torch.compile(R.model_step, fullgraph=True, backend="eager")
    x, m, coefs = torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 14)
    hist, out = torch.randn(3, 2, 4), torch.empty(2, 4)
    step(x, m, hist, coefs, torch.tensor(2), out, reads=2, cfg=False)
    want = torch.empty(2, 4)
    R.model_step(x, m, hist.clone(), coefs, 2, want, reads=2, cfg=False)
    torch.testing.assert_close(out, want)


def test_transition_dots_per_sample():
    g = torch.Generator().manual_seed(0)
    x, xp, xt = (torch.randn(3, 7, generator=g, dtype=torch.float64) for _ in range(3))
    got = R.transition_dots(x, xp, xt)
    d, r = x - xp, xt - x
    torch.testing.assert_close(got, torch.stack([(d * r).sum(1), (d * d).sum(1)], 1))
