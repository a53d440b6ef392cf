"""Calibrate LTC-Accel, save the weights, load them back and sample; or let ltc choose.

``ltc.calibrate`` fits the extrapolation weights on the first half of the calibration noises and
judges them on the other half (its report goes to the ``ltc`` logger, shown here with
``logging.basicConfig``); ``ltc.calibration.auto`` runs the same rule over several LTC structures
and the plain plans, so on the same noises both give the same verdict for the same structure.  The
file is safetensors with metadata (no pickle) and is verified when loaded.

    python examples/calibrate_save_load.py [OUT_DIR]
"""
import logging
import sys
from pathlib import Path

import torch

import ltc
import ltc.calibration


def main(out_dir: str = ".") -> torch.Tensor:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    schedule = ltc.Schedule.flow(3.0)
    model = ltc.oracles.GaussianMixture.random(schedule, dim=16)     # stand-in: any fn(x, t) with a prediction type
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 16, generator=g)                          # 32 fit the weights, 32 judge them
    cal = ltc.calibrate(model, schedule, ltc.policies.LTC(), sampler="euler", steps=20, noise=noise,
                        objective="trajectory")                       # logs the report; warns if LTC is refused
    path = Path(out_dir) / "ltc_flow3_euler_20.safetensors"
    cal.save(path)
    cal = ltc.Calibration.load(path)                                  # verified when loaded
    x = ltc.sample(model, schedule, cal.policy(), sampler="euler", steps=20, shape=(4, 16), generator=g,
                   progress=False)
    choice = ltc.calibration.auto(model, schedule, steps=20, nfe=13, sampler="euler", noise=noise,
                                  objective="trajectory")             # the same rule, over more structures
    y = choice.sample(model, shape=(4, 16), generator=g, progress=False)  # LTC only if it passed the refusal rule
    same = next(c for c in choice.candidates if c["steps"] == cal.steps.tolist())
    print(f"saved and reloaded {path}; LTC(): {cal.verdict} (calibrate), {same['own_verdict']} (auto, same "
          f"structure); auto chose {'LTC' if choice.accepted else 'plain'}")
    return torch.cat([x, y])


if __name__ == "__main__":
    main(*sys.argv[1:])
