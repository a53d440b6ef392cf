"""Search a plan for a budget of model calls, save it, load it and sample with it; see what it gained.

``ltc.optimize`` fits the step grid, the sampler and LTC weights on half the noises and lets the
calibration judge decide on the other half; it returns the best hand-designed plan when its own
ones do not win.  Here the model is an exact oracle, so the example also measures both plans
against the exact endpoint on noises the search never saw.

    python examples/optimize_plan.py [OUT_DIR]
"""
import logging
import sys
from pathlib import Path

import torch

import ltc
from ltc.zoo.oracles import exact_endpoint


def main(out_dir: str = ".") -> torch.Tensor:
    logging.basicConfig(level=logging.INFO, format="%(message)s")    # ltc.optimize logs its judged table
    schedule = ltc.Schedule.vp("scaled_linear", spacing="trailing")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=16)
    model = oracle.as_prediction("eps")                               # stand-in: any fn(x, t) with a prediction type
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = ltc.optimize(model, schedule, nfe=6, noise=noise)          # 32 fit, 32 judge; at most 600 model calls
    path = Path(out_dir) / "vp_dpm_nfe6.safetensors"
    plan.save(path)
    plan = ltc.OptimizedPlan.load(path)                               # verified whole when loaded

    test = torch.randn(256, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = plan.sample(model, noise=test, progress=False)               # checks the model against what it was fitted on
    st = ltc.Stepper(plan.schedule, plan.policy, sampler=plan.sampler(), noise=test, predictions=[model])
    while not st.done:                                                # the same plan in a loop you own
        x_in, t, _ = st.request()
        st.step(model(x_in, t))
    assert torch.equal(st.x, x)
    hand = ltc.sample(model, schedule, sampler="dpmpp_2m", steps=6, noise=test, progress=False)
    exact = exact_endpoint(oracle, test, plan.grid, steps=300)
    err = lambda y: float(((y - exact) ** 2).mean(1).sqrt().mean())  # noqa: E731
    print(f"{plan!r}: {plan.report['decision']['chosen']}; cost {plan.cost['calls']} model calls. Error against the "
          f"exact endpoint on 256 unseen noises, 6 model calls each: {err(x):.4f} (this plan) vs {err(hand):.4f} "
          f"(DPM-Solver++(2M) on its own grid)")
    return x


if __name__ == "__main__":
    main(*sys.argv[1:])
