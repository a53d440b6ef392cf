"""ltc.Stepper inside a loop you own: you make the model calls, ltc takes the steps.

The plan (here LTC-Accel, which skips some model calls) decides which model runs; the stepper's
result equals ``ltc.sample``'s bit for bit.  The model is an exact oracle standing in for any
``fn(x, t) -> eps``.

    python examples/stepper_foreign_loop.py
"""
import torch

import ltc


def main(steps: int = 20) -> torch.Tensor:
    schedule = ltc.Schedule.vp("linear", spacing="trailing")
    model = ltc.oracles.GaussianMixture.random(schedule, dim=16).as_prediction("eps")  # stand-in for a network
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    st = ltc.Stepper(schedule, ltc.policies.LTC(), sampler="dpmpp_2m", steps=steps, noise=noise,
                     predictions="eps")
    calls = 0
    while not st.done:                          # your loop: logging, guidance tricks, anything
        x_in, t, k = st.request()               # only the steps that need a model call; k: which model
        st.step(model(x_in, t))
        calls += 1
    reference = ltc.sample(model, schedule, ltc.policies.LTC(), steps=steps, noise=noise, progress=False)
    assert torch.equal(st.x, reference)
    print(f"{calls} model calls for {steps} steps; identical to ltc.sample")
    return st.x.clone()


if __name__ == "__main__":
    main()
