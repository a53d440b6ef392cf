"""A model output whose samples are contiguous blocks but lie further apart than their size (a
DiT's ``out[:, :4]`` of a contiguous ``[B, 8, H, W]``) is read in place with its batch stride by
every backend, with the contiguous result's bits; any other non-contiguous layout is copied once
(:func:`ltc.ops.checks.batch_strided`), with the same result.
"""
from __future__ import annotations

import pytest
import torch

from cases import generator, history, nan_like, random, same_bits, table
from ltc.ops import checks

SHAPES = [(1, 1), (1, 7), (3, 5), (1, 17), (3, 341), (2, 4, 9, 11), (2, 3, 5, 7)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def wide(m: torch.Tensor, extra: int = 3) -> torch.Tensor:
    """``m``'s values as the first channels of a contiguous tensor with ``extra`` more (NaN)
    channels along dim 1 (a 2-D ``[B, L]`` gets extra columns): each sample contiguous, the batch
    stride larger than the sample."""
    buffer = torch.full((m.shape[0], m.shape[1] + extra, *m.shape[2:]), float("nan"), dtype=m.dtype,
                        device=m.device)
    view = buffer[:, :m.shape[1]]
    view.copy_(m)
    return view


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_a_batch_strided_model_output_gives_the_contiguous_result(backend, shape, dtype):
    device = backend.device
    for cfg in (False, True):
        gen = generator("batch strided", shape, dtype, cfg)
        x = random(shape, dtype, device, gen)
        m = random((shape[0] * (2 if cfg else 1), *shape[1:]), dtype, device, gen)
        hist, coefs, z = history(shape, dtype, device, gen, 5, 3), table(dtype, device, gen), random(shape, dtype,
                                                                                                      device, gen)
        strided = wide(m)
        assert checks.batch_strided(strided) is strided
        results = []
        for model_out in (m, strided):
            h, out = hist.clone(), nan_like(x)
            backend.module.model_step(x, model_out, h, coefs, 5, out, reads=3, cfg=cfg, noise=z)
            results.append((out, h))
        (out_c, h_c), (out_s, h_s) = results
        assert not out_c.isnan().any()
        assert same_bits(out_c, out_s) and same_bits(h_c, h_s), (cfg,)


def test_only_sample_contiguous_layouts_are_read_in_place():
    t = torch.zeros(4, 8, 6, 5)
    assert checks.batch_strided(t[:, :4]) is not None and checks.sample_contiguous(t[:, :4])
    assert checks.batch_stride(t[:, :4]) == 8 * 6 * 5
    assert checks.batch_stride(t) == 6 * 5 * 8 and checks.batch_stride(t[:1, :4]) == 4 * 6 * 5
    assert checks.batch_strided(t[::2]) is not None and checks.batch_stride(t[::2]) == 2 * 8 * 6 * 5
    assert checks.sample_contiguous(torch.zeros(4, 1, 5)[:, :, :5])
    for other in (t[:, :, :3], t.transpose(2, 3), t[:, ::2]):  # a gap or a permutation inside a sample
        assert not checks.sample_contiguous(other)
        copied = checks.batch_strided(other)
        assert copied.is_contiguous() and torch.equal(copied, other)


def test_a_model_output_with_gaps_inside_its_samples_is_copied_with_the_same_result(backend):
    device, gen = backend.device, generator("gaps")
    shape = (2, 4, 5, 6)
    x, m = random(shape, torch.float32, device, gen), random((4, 4, 5, 6), torch.float32, device, gen)
    hist, coefs = history(shape, torch.float32, device, gen, 2, 1), table(torch.float32, device, gen)
    gapped = torch.full((4, 4, 5, 12), float("nan"), device=device)[..., ::2]
    gapped.copy_(m)
    results = []
    for model_out in (m, gapped):
        h, out = hist.clone(), nan_like(x)
        backend.module.model_step(x, model_out, h, coefs, 2, out, reads=1, cfg=True)
        results.append((out, h))
    assert same_bits(results[0][0], results[1][0]) and same_bits(results[0][1], results[1][1])


def test_the_overlap_checks_see_the_whole_span_of_a_strided_output(checked):
    """``out`` overlapping a batch-strided model output, which is now read in place (not a copy),
    is refused; the span check is conservative (the gaps between samples count)."""
    gen = generator("span")
    x = random((2, 5), torch.float32, "cpu", gen)
    buffer = torch.zeros(2, 10)
    m = buffer[:, :5]
    hist, coefs = history((2, 5), torch.float32, "cpu", gen, 1, 1), table(torch.float32, "cpu", gen)
    out = buffer.view(-1)[5:15].view(2, 5)  # the gap after sample 0, then sample 1
    cuda_ext = checked.__name__ == "ltc.ops.cuda"  # on CPU tensors its device check comes first
    with pytest.raises(ValueError, match="needs CUDA tensors" if cuda_ext else "out overlaps model_out"):
        checked.model_step(x, m, hist, coefs, 1, out, reads=1, cfg=False)
    assert checks.overlap(buffer[0, 5:], m) and not checks.overlap(buffer[1, 5:], m)
