"""Convergence order of every sampler against the exact probability-flow ODE endpoint.

Gaussian-mixture oracle (4-D, 3 components), 16 noises, grids uniform in log-SNR on [-3, 3] that
end at positive noise ("keep") and, for contrast, grids that finish with a jump to sigma = 0.
The order is the slope of log(endpoint RMSE) against log(steps) over 8..64 steps (Heun takes two
model calls per step: ``nfe`` in the JSON).  UniPC's corrector raises UniP-p to order p + 1.

    python bench/convergence.py   -> bench/results/convergence.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ltc  # noqa: E402
from _env import write_result  # noqa: E402
from ltc.zoo.oracles import GaussianMixture, exact_endpoint, rmse  # noqa: E402
from ltc.samplers import DDIM, DPMSolverPP, Euler, Heun, UniPC  # noqa: E402

STEPS = [8, 16, 32, 64]
SAMPLERS = {"ddim": DDIM(), "euler": Euler(), "dpmpp_2m": DPMSolverPP(2, lower_order_final=False),
            "dpmpp_3m": DPMSolverPP(3, lower_order_final=False), "heun": Heun(),
            "unipc_1m (bh2)": UniPC(1, lower_order_final=False), "unipc_2m (bh1)": UniPC(2, "bh1", lower_order_final=False),
            "unipc_2m (bh2)": UniPC(2, lower_order_final=False), "unipc_3m (bh2)": UniPC(3, lower_order_final=False)}


def main():
    rows = []
    for family in ("vp", "flow"):
        for final in ("keep", "zero"):
            sched = ltc.Schedule.log_snr(-3.0, 3.0, family=family, final=final)
            oracle = GaussianMixture.random(sched, dim=4, components=3, seed=0)
            noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            exact = exact_endpoint(oracle, noise, sched.discretize(8), steps=400)
            for name, sampler in SAMPLERS.items():
                runs = [ltc.sample(oracle, sched, sampler=sampler, steps=n, noise=noise, progress=False,
                                   return_info=True) for n in STEPS]
                errs = [rmse(x, exact) for x, _ in runs]
                order = float(-np.polyfit(np.log(STEPS), np.log(errs), 1)[0])
                rows.append({"family": family, "grid_end": final, "sampler": name, "steps": STEPS,
                             "nfe": [info.nfe for _, info in runs], "rmse": errs, "order": order})
                print(f"{family:4} end={final:4} {name:9} order {order:5.2f}  rmse " +
                      " ".join(f"{e:.2e}" for e in errs))
    print("wrote", write_result("convergence", {"oracle": "gaussian mixture, 4-D, 3 components, seed 0",
                                                "lambda_range": [-3, 3], "rows": rows}))


if __name__ == "__main__":
    main()
