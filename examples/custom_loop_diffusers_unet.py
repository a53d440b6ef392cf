"""A diffusers UNet sampled by ltc, with classifier-free guidance: the README's model contract.

A tiny UNet2DConditionModel with random weights stands in for Stable Diffusion's (no download);
with real weights, load ``pipe.unet`` and ``pipe.scheduler`` instead and nothing else changes.
The diffusers scheduler gives ltc the exact grid, sampler and prediction type.

    python examples/custom_loop_diffusers_unet.py
"""
import diffusers
import torch

import ltc
from ltc.adapters.diffusers import (model_fn_from_unet, prediction_from_diffusers, sampler_from_diffusers,
                                    schedule_from_diffusers)


def tiny_unet() -> diffusers.UNet2DConditionModel:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=8).eval()


def main(steps: int = 10, batch: int = 2) -> torch.Tensor:
    unet = tiny_unet()
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                      beta_end=0.012, timestep_spacing="leading", steps_offset=1)
    schedule = schedule_from_diffusers(scheduler, steps)            # diffusers' exact timesteps and sigmas
    sampler = sampler_from_diffusers(scheduler, steps)              # DPM-Solver++(2M) with diffusers' rules
    cond = torch.randn(batch, 7, 16)                                # stand-in prompt embeddings [B, L, C]
    uncond = torch.zeros(batch, 7, 16)
    model = model_fn_from_unet(unet, prediction=prediction_from_diffusers(scheduler), name="unet")
    x, info = ltc.sample(model, schedule, sampler=sampler, steps=None, shape=(batch, 4, 8, 8),
                         generator=torch.Generator().manual_seed(0), guidance_scale=7.5,
                         model_kwargs={"encoder_hidden_states": torch.cat([uncond, cond])},  # unconditional first
                         return_info=True, progress=False)
    print(f"samples {tuple(x.shape)}, {info.nfe} UNet calls on the doubled batch, executor {info.executor}")
    return x


if __name__ == "__main__":
    main()
