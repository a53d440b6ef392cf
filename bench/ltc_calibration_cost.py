"""Cost of fitting one LTC weight: the closed form against the reference grid search, same tensors.

The tensors are the ones a real calibration pass fits on: a recording ops backend wraps the
reference ops and keeps, at every extrapolated step of ``ltc.calibrate`` (step objective, state
x), the arguments of ``transition_dots``: x_i, x_i - gamma (x_i - x_{i-1}) and the true next
state x*.  On each step's tensors:

* closed form (ours): ``transition_dots`` -> w = clamp(sum <d, r> / sum <d, d>, 0, 10);
* reference: 1000 candidate w in linspace(0, 10, 1000), one norm |x_i + w d - x*| each, argmin.

Reported per case: max |w_closed - w_grid| (must be <= the grid spacing 10/999, up to ties at
the grid's resolution), median times of both over repeats (interleaved), and their ratio.
Two sizes: the exact Gaussian-mixture oracle at d = 64 with a batch of 64, and a latent-sized
mixture [4, 4, 64, 64] (d = 16384, batch 4).

    python bench/ltc_calibration_cost.py         # writes bench/results/ltc_calibration_cost.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import types
from pathlib import Path

import torch

import ltc
from ltc.ops import reference as ops_reference
from ltc.calibration.fit import Session
from ltc.zoo.oracles import GaussianMixture
from ltc.policies import LTC

RESULT = Path(__file__).parent / "results" / "ltc_calibration_cost.json"
GRID = 1000


def recording_ops(store: list):
    """The reference ops, with ``transition_dots`` recording copies of its inputs."""
    def transition_dots(x, x_prev, x_target):
        store.append((x.clone(), x_prev.clone(), x_target.clone()))
        return ops_reference.transition_dots(x, x_prev, x_target)
    return types.SimpleNamespace(model_step=ops_reference.model_step, extrapolate_step=ops_reference.extrapolate_step,
                                 transition_dots=transition_dots)


def capture(dim: int, batch: int, shape: tuple, steps: int) -> list:
    """(x_i, x_i - dir, x*) of every extrapolated step of one calibration pass."""
    schedule = ltc.Schedule.vp("scaled_linear", spacing="trailing")
    gm = GaussianMixture.random(schedule, dim=dim, components=8, seed=0)
    model = ltc.Model(lambda x, t: gm(x.reshape(x.shape[0], -1), t).reshape(x.shape), "x0", "gmm")
    noise = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    store: list = []
    # held_out given: all ``batch`` noises fit (no report here, so the held-out ones are never run)
    session = Session(model, schedule, sampler="ddim", steps=steps, noise=noise, held_out=noise[:1].clone())
    session.ops = recording_ops(store)          # the fit walk's step ops
    session.calibrate(LTC(state="x"), report=False)
    return store


def closed_form(x, x_prev, target):
    dots = ops_reference.transition_dots(x, x_prev, target).sum(0)
    return (dots[0] / dots[1]).clamp(0.0, 10.0)


def grid_search(x, x_prev, target):
    """The reference method: one norm per candidate w."""
    d, r = x - x_prev, target - x
    best_w, best = 0.0, None
    for w in torch.linspace(0.0, 10.0, GRID).tolist():
        loss = torch.linalg.vector_norm(r - w * d)
        if best is None or loss < best:
            best, best_w = loss, w
    return torch.tensor(best_w)


def timed(fn, args, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return times


def run_case(name, dim, batch, shape, steps, repeats) -> dict:
    store = capture(dim, batch, shape, steps)
    diffs, closed_t, grid_t = [], [], []
    for tensors in store:
        w_closed, w_grid = float(closed_form(*tensors)), float(grid_search(*tensors))
        diffs.append(abs(w_closed - w_grid))
        for _ in range(repeats):  # interleaved, so machine noise hits both alike
            closed_t += timed(closed_form, tensors, 1)
            grid_t += timed(grid_search, tensors, 1)
    spacing = 10.0 / (GRID - 1)
    c, g = statistics.median(closed_t), statistics.median(grid_t)
    out = {"case": name, "shape": [batch, *shape], "steps": steps, "skips": len(store),
           "max_abs_w_difference": max(diffs), "grid_spacing": spacing,
           "same_w_to_grid_resolution": max(diffs) <= spacing,
           "closed_form_median_s": c, "grid_search_median_s": g, "time_ratio": g / c,
           "closed_form_s": closed_t, "grid_search_s": grid_t}
    print(f"{name}: {len(store)} skips, max |w_closed - w_grid| = {max(diffs):.2e} (spacing {spacing:.2e}); "
          f"closed {c * 1e6:.1f} us, grid {g * 1e3:.2f} ms, ratio {g / c:.0f}x")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [run_case("oracle d=64, batch 64", 64, 64, (64,), 40, args.repeats),
             run_case("latent [4, 4, 64, 64]", 4 * 64 * 64, 4, (4, 64, 64), 40, args.repeats)]
    out = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "threads": torch.get_num_threads(), "ltc": ltc.__version__,
                       "device": "cpu", "dtype": "float32"},
           "command": "python bench/ltc_calibration_cost.py", "cases": cases}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=1))
    print("wrote", RESULT)


if __name__ == "__main__":
    main()
