"""ltc inside an existing diffusers pipeline: one line swaps the scheduler, one more stitches models.

A tiny DiT pipeline with random weights stands in for a real one (``DiTPipeline.from_pretrained(...)``
works the same way).  The pipeline keeps its own loop, guidance and VAE; ltc's scheduler walks the
plan: with LTC the transformer runs only on the plan's model steps, with T-Stitch the small model
takes the first 40% of the steps.

    python examples/diffusers_pipeline_one_line.py
"""
import diffusers
import torch

import ltc
import ltc.adapters.diffusers
from ltc.adapters.diffusers import StitchedDenoiser


class CountCalls(torch.nn.Module):
    """Counts the calls of the denoiser it wraps (what the pipeline sees is the wrapped model)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def tiny_dit(seed: int, layers: int) -> diffusers.DiTTransformer2DModel:
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=layers, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_zero").eval()


def main() -> dict:
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
                                  latent_channels=4, norm_num_groups=4).eval()
    large = CountCalls(tiny_dit(0, layers=4))
    pipe = diffusers.DiTPipeline(transformer=large, vae=vae, scheduler=diffusers.DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    run = dict(class_labels=[1, 2], num_inference_steps=20, guidance_scale=4.0, output_type="np")

    plain = pipe(generator=torch.Generator().manual_seed(0), **run).images
    calls = {"diffusers DPM-Solver++(2M)": large.calls}

    base = pipe.scheduler
    pipe.scheduler = ltc.adapters.diffusers.scheduler(base, sampler="dpmpp_2m")   # the one line: same images
    same = pipe(generator=torch.Generator().manual_seed(0), **run).images
    print(f"ltc scheduler, Full: max |image difference| vs diffusers' own = {abs(same - plain).max():.2e}")

    large.calls = 0
    pipe.scheduler = ltc.adapters.diffusers.scheduler(base, sampler="dpmpp_2m", policy=ltc.policies.LTC(weights=1.0))
    pipe(generator=torch.Generator().manual_seed(0), **run)
    calls["ltc LTC (w = 1, uncalibrated)"] = large.calls

    small = CountCalls(tiny_dit(1, layers=1))
    large.calls = 0
    pipe.scheduler = ltc.adapters.diffusers.scheduler(base, sampler="dpmpp_2m", policy=ltc.policies.TStitch([0.4]))
    pipe.transformer = StitchedDenoiser([small, large], pipe.scheduler)
    pipe(generator=torch.Generator().manual_seed(0), **run)
    calls["ltc T-Stitch 40% small"] = f"small {small.calls} + large {large.calls}"
    for name, n in calls.items():
        print(f"{name:32s} model calls: {n}")
    return calls


if __name__ == "__main__":
    main()
