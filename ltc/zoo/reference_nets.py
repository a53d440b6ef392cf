"""Reference networks for speed measurements: DiT-S/B/L/XL (patch 2) and a small UNet, random weights.

They exist to time samplers on the shapes of real latent models; nothing is trained, shipped or
downloaded.  Contract of :mod:`ltc.models` (prediction ``eps``)::

    eps = net(x, t, y=labels)    x [B, 4, 32, 32] (the latent of a 256 px image), t [B] model times
                                 in [0, 999], y [B] int64 classes in [0, 1000) (1000 = null class)

Under classifier-free guidance ``x`` has 2B rows (unconditional half first) and a ``y`` of B rows
labels the conditional half.  All weights are drawn at random (normal, std 0.02), including the
layers that training would start at zero (adaLN-zero): with zero init every output is 0, which
would make replay-vs-eager comparisons meaningless.

DiT (Peebles & Xie, arXiv 2212.09748), width D, depth L, H heads, patch p, T = (32/p)^2 tokens::

    h = Patchify(x) + P                 p x p convolution with stride p -> [B, T, D]; P fixed 2-D sin-cos
    c = MLP(sinusoid_256(t)) + E[y]     [B, D]
    block:  (a1, b1, g1, a2, b2, g2) = W SiLU(c)                  six [B, D] modulations
            h = h + g1 * Attn(LN(h) (1 + a1) + b1)                multi-head self-attention, H heads
            h = h + g2 * MLP(LN(h) (1 + a2) + b2)                 D -> 4D -> D, tanh-GELU
    out:    (a, b) = W_f SiLU(c);  Unpatchify(Linear(LN(h) (1 + a) + b)) -> [B, 8, 32, 32]
    eps = out[:, :4]                    (the other 4 channels are DiT's learned variance, unused)

LN has no affine parameters (eps 1e-6).  Sizes (D, L, H): S (384, 12, 6), B (768, 12, 12),
L (1024, 24, 16), XL (1152, 28, 16); with P counted, DiT-XL/2 has 675,129,632 parameters, the
figure of the paper's code.

The small UNet is the zoo's UNet (:class:`ltc.zoo.nets.UNet`: residual blocks, no attention) at
latent size: 4 channels, width 128 with multipliers (1, 2, 2), 1000 classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nets import UNet, timestep_embedding

DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
LATENT = (4, 32, 32)
NUM_CLASSES = 1000
FREQUENCY_DIM = 256


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed positional embedding ``[grid^2, dim]``: the first half of the channels encodes the
    row, the second the column, each as ``[sin(p w_k), cos(p w_k)]`` with ``w_k = 10000^(-k/(dim/4))``."""
    quarter = dim // 4
    w = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def encode(p):
        a = p.reshape(-1, 1) * w[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)
    return torch.cat([encode(rows), encode(cols)], dim=1).to(torch.float32)


def labels_for(y: torch.Tensor | None, batch: int, null: int, device) -> torch.Tensor:
    """Class indices ``[batch]``: ``y``, null classes then ``y`` for a CFG-doubled batch, or all null."""
    if y is None:
        return torch.full((batch,), null, dtype=torch.long, device=device)
    if y.shape == (batch // 2,) and 2 * y.shape[0] == batch:
        return torch.cat([torch.full_like(y, null), y])
    if y.shape != (batch,):
        raise ValueError(f"y must have shape [{batch}] (or [{batch // 2}] under guidance), got {tuple(y.shape)}")
    return y


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``h (1 + scale) + shift`` with ``[B, D]`` modulations broadcast over the tokens."""
    return h * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.ada = nn.Linear(dim, 6 * dim)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        a1, b1, g1, a2, b2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        q, k, v = self.qkv(modulate(F.layer_norm(h, (D,), eps=1e-6), b1, a1)) \
            .reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        h = h + g1[:, None] * self.proj(attn)
        mlp = self.fc2(F.gelu(self.fc1(modulate(F.layer_norm(h, (D,), eps=1e-6), b2, a2)), approximate="tanh"))
        return h + g2[:, None] * mlp


class DiT(nn.Module):
    """Class-conditional DiT with adaLN-zero blocks (see the module docstring)."""

    prediction = "eps"
    half_batch_kwargs = ("y",)  # B labels with a 2B (guidance) batch: the conditional half (ltc.models)

    def __init__(self, width: int, depth: int, heads: int, patch: int = 2, latent=LATENT,
                 num_classes: int = NUM_CLASSES, name: str | None = None):
        super().__init__()
        channels, height, width_px = latent
        if height != width_px or height % patch or width % heads or width % 4:
            raise ValueError(f"DiT needs a square latent divisible by patch={patch} and a width divisible by "
                             f"heads and 4; got latent={latent}, width={width}, heads={heads}")
        self.name = name or f"DiT(D={width}, L={depth})/{patch}"
        self.patch, self.channels, self.grid, self.null_class = patch, channels, height // patch, num_classes
        self.embed = nn.Conv2d(channels, width, patch, stride=patch)
        self.register_buffer("pos", sincos_2d(self.grid, width)[None], persistent=False)
        self.t_mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.y_embed = nn.Embedding(num_classes + 1, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.final_ada = nn.Linear(width, 2 * width)
        self.final = nn.Linear(width, patch * patch * 2 * channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B, p, G, C = x.shape[0], self.patch, self.grid, self.channels
        wdtype = self.embed.weight.dtype
        h = self.embed(x.to(wdtype)).flatten(2).transpose(1, 2) + self.pos.to(wdtype)
        c = self.t_mlp(timestep_embedding(t.expand(B) if t.ndim == 0 else t, FREQUENCY_DIM).to(wdtype))
        c = c + self.y_embed(labels_for(y, B, self.null_class, x.device))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=1)
        out = self.final(modulate(F.layer_norm(h, (h.shape[-1],), eps=1e-6), shift, scale))
        out = out.reshape(B, G, G, p, p, 2 * C).permute(0, 5, 1, 3, 2, 4).reshape(B, 2 * C, G * p, G * p)
        return out[:, :C].to(x.dtype)


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Every weight normal(0, 0.02), every bias 0, from ``seed``; no gradients (timing only)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=g) * 0.02)
    return net.eval().requires_grad_(False)


def dit(size: str = "S", *, patch: int = 2, seed: int = 0, device=None, dtype=None) -> DiT:
    """DiT-``size``/``patch`` (size in S, B, L, XL) with random weights."""
    if size not in DIT_SIZES:
        raise ValueError(f"size must be one of {tuple(DIT_SIZES)}, got {size!r}")
    width, depth, heads = DIT_SIZES[size]
    net = randomize(DiT(width, depth, heads, patch, name=f"DiT-{size}/{patch}"), seed)
    return net.to(device=device, dtype=dtype)


def small_unet(*, channels: int = 128, seed: int = 0, device=None, dtype=None) -> UNet:
    """A small latent UNet (zoo architecture: width ``channels`` with multipliers (1, 2, 2),
    1000 classes), random weights.  Runs in any float dtype: the sinusoidal time embedding
    (float32) is cast to the weight dtype on its way into the time MLP."""
    net = UNet(channels=channels, multipliers=(1, 2, 2), emb_dim=4 * channels, num_classes=NUM_CLASSES,
               in_channels=LATENT[0])
    net = randomize(net, seed)
    net.time_mlp.register_forward_pre_hook(lambda mlp, args: (args[0].to(mlp[0].weight.dtype),))
    net.prediction, net.name = "eps", "UNet-small"
    return net.to(device=device, dtype=dtype)
