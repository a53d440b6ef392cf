"""Network definitions of the zoo: a class-conditional UNet denoiser and a small CNN classifier.

Denoiser contract (what :func:`ltc.sample` calls)::

    eps_hat = net(x, t, y=labels)      x [B, 1, 16, 16], t [B] (model time, float), y [B] int64

``t`` is the integer training timestep as a float in [0, T-1] (``grid.t`` of a vp grid).  The
time embedding is sinusoidal, ``e_t = [cos(t w_k), sin(t w_k)]`` with ``w_k = 10000^(-k/(d/2))``,
followed by a two-layer MLP; the class embedding (index 10 = the null class, "no label") is added
to it.  Under classifier-free guidance ltc doubles the batch (unconditional half first); a
``y`` of length ``B`` given with an ``x`` of length ``2B`` is therefore read as the labels of the
conditional half, and the first half gets the null class (declared as ``half_batch_kwargs``, so
:func:`ltc.sample` accepts such a ``y``).  Labels must be integers in ``[0, num_classes]``
(``num_classes`` = null); they are checked once per label tensor (a host read only when a new
tensor, or new values, arrive, never while a CUDA graph is captured).

UNet (``channels`` C, ``multipliers`` (m_0, m_1, ...)): level l works at 16 / 2^l pixels with
C * m_l channels and one residual block; the path is conv_in -> down blocks -> middle block ->
up blocks (each concatenating the skip of its level) -> GroupNorm/SiLU/conv_out (zero init).

Residual block:  h = conv(silu(gn(x))) + W e;  out = skip(x) + conv(silu(gn(h))).

The classifier is three conv layers with pooling and a global average; its ``features`` (the
penultimate ``[B, feature_dim]`` activations) define the Frechet distance of :mod:`.metrics`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NULL_CLASS = 10


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of times ``t`` ``[B]`` (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """Class-conditional eps-predicting UNet for ``[B, C, H, W]`` images, ``C = in_channels`` and H, W
    divisible by ``2 ** (len(multipliers) - 1)`` (the zoo's: ``[B, 1, 16, 16]``; see module doc)."""

    half_batch_kwargs = ("y",)  # B labels with a 2B (guidance) batch: the conditional half

    def __init__(self, channels: int = 32, multipliers=(1, 2, 2), emb_dim: int = 128,
                 num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.config = {"kind": "unet", "channels": channels, "multipliers": list(multipliers),
                       "emb_dim": emb_dim, "num_classes": num_classes, "in_channels": in_channels}
        self.emb_dim = emb_dim
        self.null_class = num_classes
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        widths = [channels * m for m in multipliers]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = widths[0]
        for level, w in enumerate(widths):
            self.down.append(ResBlock(ch, w, emb_dim))
            ch = w
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(ch, ch, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            self.up.append(ResBlock(ch + widths[level], widths[level], emb_dim))
            ch = widths[level]
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self._labels_checked = None  # (id, version, data pointer) of the last label tensor found valid

    def labels_for(self, y: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Class indices ``[batch]``: ``y`` itself, null + ``y`` for a CFG-doubled batch, or null."""
        if y is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex \
                or y.dtype == torch.bool:
            got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
            raise TypeError(f"y must be an integer tensor of class labels in [0, {self.null_class}] "
                            f"({self.null_class} = no label), got {got}")
        if y.ndim != 1 or y.shape[0] not in (batch, batch // 2) or (y.shape[0] != batch and batch % 2):
            raise ValueError(f"y must have shape [{batch}] (or [{batch // 2}] under guidance), got {tuple(y.shape)}")
        self._check_label_values(y)
        y = y.to(device=device, dtype=torch.long)
        if y.shape == (batch,):
            return y
        return torch.cat([torch.full_like(y, self.null_class), y])

    def _check_label_values(self, y: torch.Tensor) -> None:
        """Labels in [0, null]; read on the host once per label tensor and version (the same ``y`` is
        passed at every step of a sampling run), never while a CUDA graph is being captured."""
        key = (id(y), y._version, y.data_ptr())
        if key == self._labels_checked or (y.is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.null_class):
            raise ValueError(f"y holds labels outside [0, {self.null_class}] (classes 0..{self.null_class - 1}, "
                             f"{self.null_class} = no label): min {int(y.min())}, max {int(y.max())}")
        self._labels_checked = key

    def _check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        channels, factor = self.conv_in.in_channels, 2 ** len(self.downsample)
        if x.ndim != 4 or x.shape[1] != channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"UNet expects x of shape [B, {channels}, H, W] with H and W divisible by {factor} "
                             f"(the zoo models: [B, 1, 16, 16]), got {tuple(x.shape)}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"UNet expects t of shape [B] = [{x.shape[0]}] (or a 0-d time), got {tuple(t.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, t)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        emb = emb + self.class_emb(self.labels_for(y, x.shape[0], x.device))
        h = self.conv_in(x.to(self.conv_in.weight.dtype))
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.mid(h, emb)
        for k, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if k < len(self.upsample):
                h = self.upsample[k](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)


class Classifier(nn.Module):
    """Small CNN digit classifier on ``[B, 1, 16, 16]`` images in [-1, 1]."""

    def __init__(self, widths=(32, 64, 64), num_classes: int = 10):
        super().__init__()
        self.config = {"kind": "classifier", "widths": list(widths), "num_classes": num_classes}
        c1, c2, c3 = widths
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.GroupNorm(_groups(c1), c1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.GroupNorm(_groups(c2), c2), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.GroupNorm(_groups(c3), c3), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c3, num_classes)
        self.feature_dim = c3

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[B, feature_dim]``."""
        return self.body(x.to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(config: dict) -> nn.Module:
    """The network described by ``config`` (the JSON stored in a weight file's metadata)."""
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"architecture config must be a dict with a 'kind', got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    if config["kind"] == "unet":
        return UNet(**kwargs)
    if config["kind"] == "classifier":
        return Classifier(**kwargs)
    raise ValueError(f"unknown architecture kind {config['kind']!r} (expected 'unet' or 'classifier')")


def count_macs(net: nn.Module, *inputs, **kwargs) -> int:
    """Multiply-accumulates of one forward pass for the given inputs, counted with forward hooks
    on every Conv2d (``out elements * in_ch/groups * kh * kw``) and Linear (``out elements *
    in_features``) layer.  Normalisations, activations and resampling are not counted.  The
    count is for the whole batch of ``inputs``; divide by the batch for a per-sample figure."""
    total = [0]

    def conv_hook(mod, inp, out):
        kh, kw = mod.kernel_size
        total[0] += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod, inp, out):
        total[0] += out.numel() * mod.in_features

    handles = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            net(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total[0]
