"""Sharded, resumable generation: run it under torchrun, or as one plain process.

    torchrun --nproc_per_node 2 examples/distributed_generate.py [OUT_DIR]
    python examples/distributed_generate.py [OUT_DIR]

Sample k has its own seed, so the files do not depend on the number of processes; a rerun only
generates missing or corrupt shards; ``python -m ltc.distributed OUT_DIR`` verifies a directory.
The size here (20 samples, 10 steps) finishes in seconds on a CPU.
"""
import sys

import torch

import ltc.distributed
import ltc.zoo as zoo


def main(out_dir: str = "samples", num_samples: int = 20) -> torch.Tensor:
    model = zoo.load("unet_large", device=ltc.distributed.local_device())
    ltc.distributed.generate(model, zoo.schedule("unet_large"), out_dir=out_dir, num_samples=num_samples,
                             shape=(1, 16, 16), shard_size=10, seed=0, steps=10, guidance_scale=2.0,
                             conditioning={"y": torch.arange(num_samples) % 10},
                             unconditional={"y": torch.tensor([zoo.NULL_CLASS])}, progress=False)
    samples = ltc.distributed.load(out_dir)["samples"]              # [num_samples, 1, 16, 16], index order
    print(f"{out_dir}: {tuple(samples.shape)} samples, checksums verified")
    return samples


if __name__ == "__main__":
    main(*sys.argv[1:])
