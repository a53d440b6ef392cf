"""T-Stitch with the two shipped digit models: the small one for the first 40% of the steps.

Models are ordered small to large; each is probed once before sampling (same output shape and
prediction type).  ``TStitch(0.4) | LTC()`` would add LTC-Accel on top (calibrate it first).

    python examples/tstitch_two_models.py
"""
import torch

import ltc
import ltc.zoo as zoo


def main(steps: int = 10, batch: int = 10) -> torch.Tensor:
    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    labels = torch.arange(batch) % 10
    x, info = ltc.sample([small, large], zoo.schedule("unet_large"), ltc.policies.TStitch(0.4), steps=steps,
                         noise=torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
                         model_kwargs={"y": labels}, guidance_scale=2.0, return_info=True, progress=False)
    score = zoo.metrics.confidence(x, labels)
    print(f"calls per model (small, large): {info.nfe_per_model}; classifier agreement with the labels "
          f"{score['agreement']:.0%}")
    return x


if __name__ == "__main__":
    main()
