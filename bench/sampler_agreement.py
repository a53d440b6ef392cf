"""Agreement of ltc's samples with diffusers' own scheduler loop, per sampler x option x steps.

The same model function (the exact Gaussian-mixture oracle on the scheduler's training table, 16-D,
4 noises, float32) and the same latents drive diffusers' loop (``set_timesteps``,
``scale_model_input``, model, ``step``) and ``ltc.sample``, by two routes: through
``ltc.adapters.diffusers`` (grid and sampler read from the scheduler) and, where ltc has a name
for the setting, hand-built (``Schedule.vp(...)`` / ``Schedule.flow(...)`` + a sampler name).  Each row
gives max |ltc - diffusers| and that over max |diffusers| of the final samples (EulerDiscrete's
state x / alpha compared as x).  Rows are the list ``CASES``: add a ``Case`` per new sampler.

    python bench/sampler_agreement.py            # writes the JSON and prints the markdown table

writes bench/results/sampler_agreement.json (machine info, the rows, the steps and the tolerance
the tests assert, ``tests/test_diffusers_conventions.py``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers  # noqa: E402
import ltc  # noqa: E402
from _env import write_result  # noqa: E402
from ltc.adapters.diffusers import sampler_from_diffusers, schedule_from_diffusers  # noqa: E402
from ltc.schedule import Schedule  # noqa: E402
from ltc.zoo.oracles import GaussianMixture  # noqa: E402

STEPS = (5, 10, 20, 50)
TOLERANCE = 1e-5  # relative, what tests/test_diffusers_conventions.py asserts
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
LINEAR = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "flow": "flow_prediction"}


@dataclass
class Case:
    """One row per step count: ``scheduler`` (a diffusers class name) with ``config``; ``hand_built``
    = ``(Schedule.vp or Schedule.flow keyword arguments, ltc sampler name)`` or None (adapter only)."""

    sampler: str
    option: str
    scheduler: str
    config: dict
    hand_built: tuple | None = None
    prediction: str = "eps"
    steps: tuple = STEPS
    stochastic: bool = False  # fed the same generator draws (diffusers' step(generator=), ltc's step_noise)
    family: str = field(init=False, default="vp")

    def __post_init__(self):
        if self.prediction == "flow":
            self.family = "flow"

    def make(self):
        config = dict(self.config)
        if self.prediction != "flow" or self.scheduler != "FlowMatchEulerDiscreteScheduler":
            config["prediction_type"] = PREDICTION_TYPES[self.prediction]
        return getattr(diffusers, self.scheduler)(**config)

    def schedule(self) -> Schedule:
        kwargs = dict(self.hand_built[0])
        return Schedule.flow(**kwargs) if self.family == "flow" else Schedule.vp(**kwargs)


def _vp(beta, **kw):
    return dict(beta_schedule=beta, **kw)


CASES = [
    Case("ddim", "SD: leading, offset 1, set_alpha_to_one=False", "DDIMScheduler",
         dict(SD, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False),
         (_vp("scaled_linear", spacing="leading", steps_offset=1, final="last"), "ddim")),
    Case("ddim", "trailing", "DDIMScheduler", dict(LINEAR, timestep_spacing="trailing", clip_sample=False),
         (_vp("linear", spacing="trailing"), "ddim")),
    Case("euler", "linspace", "EulerDiscreteScheduler", dict(LINEAR), (_vp("linear", spacing="linspace"), "euler")),
    Case("euler", "SD: leading, offset 1", "EulerDiscreteScheduler",
         dict(SD, timestep_spacing="leading", steps_offset=1),
         (_vp("scaled_linear", spacing="leading", steps_offset=1), "euler")),
    Case("euler", "karras", "EulerDiscreteScheduler", dict(LINEAR, use_karras_sigmas=True),
         (_vp("linear", spacing="linspace", karras=True), "euler")),
    Case("euler", "linspace, sigma_min (zero-length step dropped)", "EulerDiscreteScheduler",
         dict(LINEAR, final_sigmas_type="sigma_min")),
    Case("euler", "flow, shift 3 (FlowMatchEuler)", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0),
         (dict(shift=3.0), "euler"), prediction="flow"),
    Case("dpmpp_2m", "SD: leading, offset 1 (README)", "DPMSolverMultistepScheduler",
         dict(SD, timestep_spacing="leading", steps_offset=1),
         (_vp("scaled_linear", spacing="leading", steps_offset=1), "dpmpp_2m")),
    Case("dpmpp_2m", "linspace, v", "DPMSolverMultistepScheduler", dict(LINEAR),
         (_vp("linear", spacing="linspace"), "dpmpp_2m"), prediction="v"),
    Case("dpmpp_2m", "trailing, sigma_min", "DPMSolverMultistepScheduler",
         dict(SD, timestep_spacing="trailing", final_sigmas_type="sigma_min"),
         (_vp("scaled_linear", spacing="trailing", final="last"), "dpmpp_2m")),
    Case("dpmpp_2m", "karras", "DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True),
         (_vp("scaled_linear", karras=True), "dpmpp_2m")),
    Case("dpmpp_2m", "karras, sigma_min (zero-length step dropped)", "DPMSolverMultistepScheduler",
         dict(SD, use_karras_sigmas=True, final_sigmas_type="sigma_min")),
    Case("dpmpp_2m", "lu lambdas", "DPMSolverMultistepScheduler", dict(SD, use_lu_lambdas=True)),
    Case("dpmpp_2m", "exponential sigmas, x0", "DPMSolverMultistepScheduler", dict(SD, use_exponential_sigmas=True),
         prediction="x0"),
    Case("dpmpp_2m", "flow sigmas, shift 3", "DPMSolverMultistepScheduler",
         dict(use_flow_sigmas=True, flow_shift=3.0), (dict(shift=3.0), "dpmpp_2m"), prediction="flow"),
    Case("dpmpp_1m", "karras", "DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True, solver_order=1),
         (_vp("scaled_linear", karras=True), "dpmpp_1m")),
    Case("dpmpp_3m", "SD: leading, offset 1", "DPMSolverMultistepScheduler",
         dict(SD, timestep_spacing="leading", steps_offset=1, solver_order=3),
         (_vp("scaled_linear", spacing="leading", steps_offset=1), "dpmpp_3m")),
    Case("dpmpp_3m", "karras", "DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True, solver_order=3),
         (_vp("scaled_linear", karras=True), "dpmpp_3m")),
    Case("dpmpp_3m", "karras, sigma_min, euler_at_final", "DPMSolverMultistepScheduler",
         dict(SD, use_karras_sigmas=True, solver_order=3, final_sigmas_type="sigma_min", euler_at_final=True)),
    Case("unipc", "bh2, order 2 (diffusers' default)", "UniPCMultistepScheduler", dict(SD),
         (_vp("scaled_linear", spacing="linspace"), "unipc")),
    Case("unipc", "bh1, order 3, trailing, sigma_min", "UniPCMultistepScheduler",
         dict(SD, solver_type="bh1", solver_order=3, timestep_spacing="trailing", final_sigmas_type="sigma_min")),
    Case("unipc", "bh2, karras", "UniPCMultistepScheduler", dict(SD, use_karras_sigmas=True)),
    Case("unipc", "bh2, order 3, leading, v", "UniPCMultistepScheduler",
         dict(LINEAR, solver_order=3, timestep_spacing="leading"),
         (_vp("linear", spacing="leading"), "unipc_3m"), prediction="v"),
    Case("heun", "linspace", "HeunDiscreteScheduler", dict(SD), (_vp("scaled_linear", spacing="linspace"), "heun")),
    Case("heun", "karras, v", "HeunDiscreteScheduler", dict(LINEAR, use_karras_sigmas=True), prediction="v"),
    Case("euler_a", "linspace (same draws)", "EulerAncestralDiscreteScheduler", dict(SD),
         (_vp("scaled_linear", spacing="linspace"), "euler_a"), stochastic=True),
    Case("dpmpp_2m_sde", "linspace (same draws)", "DPMSolverMultistepScheduler",
         dict(SD, algorithm_type="sde-dpmsolver++"), (_vp("scaled_linear", spacing="linspace"), "dpmpp_2m_sde"),
         stochastic=True),
    Case("dpmpp_3m_sde", "karras (same draws)", "DPMSolverMultistepScheduler",
         dict(SD, algorithm_type="sde-dpmsolver++", solver_order=3, use_karras_sigmas=True), stochastic=True),
]
K_SPACE = (diffusers.EulerDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler, diffusers.HeunDiscreteScheduler)


def _latents(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def diffusers_loop(scheduler, model, latents, steps, generator=None):
    """diffusers' pipeline loop; the k-diffusion schedulers' final u = x / alpha is returned as x."""
    scheduler.set_timesteps(steps)
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    draws = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(scale_input(x, t), t.to(torch.float32).expand(x.shape[0]))
            x = scheduler.step(out, t, x, **draws).prev_sample
    if isinstance(scheduler, K_SPACE):
        x = x / (1 + scheduler.sigmas[-1].double() ** 2).sqrt().float()
    return x


def ltc_start(scheduler, latents, steps):
    """ltc's start for diffusers' latents (k-diffusion schedulers: alpha_0 * init_noise_sigma * latents)."""
    if not isinstance(scheduler, K_SPACE):
        return latents
    scheduler.set_timesteps(steps)
    return latents * (scheduler.init_noise_sigma / (1 + scheduler.sigmas[0].double() ** 2).sqrt()).float()


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def _draws(like: torch.Tensor):
    """diffusers' per-step draws, in order: ``randn`` of the sample's shape from the same seed."""
    gen = _generator()
    return lambda i: torch.randn(like.shape, generator=gen, dtype=like.dtype)


def difference(x, ref) -> tuple[float, float]:
    diff = float((x.double() - ref.double()).abs().max())
    return diff, diff / float(ref.double().abs().max())


def measure(case: Case, steps: int) -> dict:
    scheduler = case.make()
    oracle_schedule = Schedule.flow(1.0) if case.family == "flow" else Schedule.vp(case.config["beta_schedule"])
    model = GaussianMixture.random(oracle_schedule, dim=16, seed=3).as_prediction(case.prediction)
    latents = _latents(4, 16)
    reference = diffusers_loop(case.make(), model, latents, steps, _generator() if case.stochastic else None)
    start = ltc_start(case.make(), latents, steps)
    schedule = schedule_from_diffusers(scheduler, steps)
    x = ltc.sample(model, schedule, sampler=sampler_from_diffusers(scheduler, steps), noise=start, progress=False,
                   step_noise=_draws(start) if case.stochastic else None)
    row = {"sampler": case.sampler, "option": case.option, "prediction": case.prediction, "steps": steps,
           "scheduler": case.scheduler, "config": case.config, "ltc_steps": schedule.discretize(None).steps,
           "adapter": dict(zip(("max_abs", "max_rel"), difference(x, reference)))}
    if case.hand_built is not None:
        x = ltc.sample(model, case.schedule(), sampler=case.hand_built[1], steps=steps, noise=start, progress=False,
                       step_noise=_draws(start) if case.stochastic else None)
        row["hand_built"] = dict(zip(("max_abs", "max_rel"), difference(x, reference)),
                                 schedule=repr(case.schedule()), sampler=case.hand_built[1])
    return row


def markdown(data: dict) -> str:
    """The table: one line per case, max rel (max abs) per step count, adapter / hand-built."""
    steps = data["steps"]
    out = ["| sampler | option | pred | route | " + " | ".join(f"N = {n}" for n in steps) + " |",
           "|---|---|---|---|" + "---|" * len(steps)]
    rows = {}
    for r in data["rows"]:
        rows.setdefault((r["sampler"], r["option"], r["prediction"]), {})[r["steps"]] = r
    for (sampler, option, pred), by_steps in rows.items():
        for route in ("adapter", "hand_built"):
            if route not in next(iter(by_steps.values())):
                continue
            cells = [f"{by_steps[n][route]['max_rel']:.1e} ({by_steps[n][route]['max_abs']:.1e})" for n in steps]
            out.append(f"| {sampler} | {option} | {pred} | {route.replace('_', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(data: dict) -> str:
    worst = max((r[route]["max_rel"], r["sampler"], r["option"], r["steps"], route)
                for r in data["rows"] for route in ("adapter", "hand_built") if route in r)
    return (f"Largest relative difference: {worst[0]:.1e} ({worst[1]}, {worst[2]}, N = {worst[3]}, "
            f"{worst[4].replace('_', '-')}); the tests assert <= {data['tolerance']:g}.")


def main() -> int:
    torch.set_num_threads(1)
    begin = time.perf_counter()
    rows = [measure(case, n) for case in CASES for n in case.steps]
    data = {"steps": list(STEPS), "tolerance": TOLERANCE, "dtype": "float32", "threads": 1,
            "diffusers": diffusers.__version__, "ltc": ltc.__version__,
            "model": "GaussianMixture.random(dim=16, seed=3) on the scheduler's training table, 4 latents",
            "wall_s": round(time.perf_counter() - begin, 1), "rows": rows}
    path = write_result("sampler_agreement", data)
    print(markdown(data))
    print()
    print(summary(data))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
