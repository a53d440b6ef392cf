"""bench/loop_overhead.py compares like with like: its loops (ltc, k-diffusion's sample_dpmpp_2m,
diffusers' DPM-Solver) give the same sample before anything is timed, and k-diffusion, optional,
is measured when it imports and skipped with the reason in the JSON when it does not.  Where
k-diffusion imports, the adapter is also checked against its real samplers (the adapter's own
tests use a transcription of them)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import ltc
from ltc.adapters.kdiffusion import SAMPLERS, from_kdiffusion
from test_kdiffusion_adapter import Denoiser, get_sigmas_karras, noise

BENCH = Path(__file__).resolve().parents[1] / "bench" / "loop_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("loop_overhead_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kdiffusion(bench):
    return bench.load_kdiffusion()


def test_the_loops_give_the_same_sample_and_are_timed(bench, kdiffusion):
    result = bench.measure((1, 2, 4, 4), steps=4, repeats=1, kd=kdiffusion)
    loops = {"ltc_eager", "diffusers_dpmsolver"} | ({"kdiffusion_dpmpp_2m", "kdiffusion_dpmpp_2m_bare"}
                                                    if kdiffusion[0] is not None else set())
    assert set(result["overhead_us_per_step"]) == set(result["overhead_cpu_us_per_step"]) == loops
    assert set(result["relative_max_difference_to_ltc"]) == loops - {"ltc_eager"}
    assert max(result["relative_max_difference_to_ltc"].values()) <= bench.AGREEMENT_TOL
    assert ("kdiffusion" in result["skipped"]) == (kdiffusion[0] is None)


def test_without_kdiffusion_the_result_says_why(bench, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "k_diffusion" else
                        find_spec(name, *a))
    kd = bench.load_kdiffusion()
    assert kd == (None, None, "k-diffusion is not installed")
    monkeypatch.undo()
    result = bench.measure((1, 2, 4, 4), steps=3, repeats=1, kd=kd)
    assert result["skipped"]["kdiffusion"] == "k-diffusion is not installed"
    assert not any(k.startswith("kdiffusion") for k in result["overhead_us_per_step"])


def test_a_loop_that_samples_something_else_is_refused(bench):
    """The agreement check is what makes the ratios comparable: a loop off by more than round-off stops the run."""
    runs = {"model_only": lambda: None, "ltc_eager": lambda: torch.ones(3), "other": lambda: torch.ones(3) * 1.01}
    with pytest.raises(RuntimeError, match="other gives another sample than ltc"):
        bench.agreement(runs)


@pytest.mark.parametrize("k_sampler", sorted(SAMPLERS))
def test_adapter_samples_are_the_real_kdiffusion_samples(kdiffusion, k_sampler):
    """The adapter against the installed k-diffusion's own sampler (float64, 20 Karras steps), to
    the bound of test_kdiffusion_adapter.py's transcribed reference."""
    sampling = kdiffusion[0]
    if sampling is None:
        pytest.skip(kdiffusion[2])
    sigmas = get_sigmas_karras(20, 0.03, 14.6)
    den, x_T = Denoiser(), noise(sigmas)
    expected = getattr(sampling, k_sampler)(den, x_T, sigmas, extra_args={"scale": 1.2}, disable=True)
    model, schedule = from_kdiffusion(den, sigmas)
    x = ltc.sample(model, schedule, sampler=SAMPLERS[k_sampler], noise=x_T, model_kwargs={"scale": 1.2},
                   progress=False)
    assert float((x - expected).abs().max() / expected.abs().max()) <= 1e-13
