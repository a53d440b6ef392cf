"""The demo's pictures: a labelled sample grid (Pillow) and the speed/quality trade-off (matplotlib).

The grid has one row per method and one column per class label (the first ``columns`` samples of
each row, labels 0, 1, ...): each 16x16 sample is upscaled by ``scale`` with nearest-neighbour
interpolation (no smoothing: the pixels are the model's), cells are separated by ``gap`` pixels of
background, row names are written on the left and the labels above the columns.  Pixel values in
[-1, 1] map to black..white (the digits are white on black, as in the data).
"""
from __future__ import annotations

from pathlib import Path

import torch

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def sample_grid(samples: dict, labels, *, scale: int = 4, gap: int = 6, title: str = ""):
    """A PIL image: rows ``samples[name]`` (``[B, 1, H, W]`` in [-1, 1], ordered as the dict),
    columns headed by ``labels`` (one per column; ``len(labels) <= B``)."""
    from PIL import Image, ImageDraw

    names = list(samples)
    columns = len(labels)
    if not names or columns == 0:
        raise ValueError("sample_grid needs at least one row and one column")
    h, w = samples[names[0]].shape[-2:]
    cell_h, cell_w = h * scale, w * scale
    font = _font(max(11, cell_h // 4))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_width(probe, n, font) for n in names) + 2 * gap
    title_h = (cell_h // 3 + gap) if title else 0
    head_h = cell_h // 3 + gap
    width = label_w + columns * (cell_w + gap) + gap
    height = title_h + head_h + len(names) * (cell_h + gap) + gap
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((gap, gap // 2), title, fill=INK, font=font)
    top = title_h + head_h
    for c, label in enumerate(labels):
        x = label_w + c * (cell_w + gap) + cell_w // 2
        draw.text((x, top - gap), str(label), fill=INK, font=font, anchor="ms")
    for r, name in enumerate(names):
        y = top + r * (cell_h + gap)
        draw.text((label_w - gap, y + cell_h // 2), name, fill=INK, font=font, anchor="rm")
        pixels = ((samples[name][:columns, 0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
        for c in range(columns):
            cell = Image.fromarray(pixels[c].to(torch.uint8).numpy(), mode="L")
            cell = cell.resize((cell_w, cell_h), Image.NEAREST).convert("RGB")
            image.paste(cell, (label_w + c * (cell_w + gap), y))
    return image


def tradeoff_plot(rows: list[dict], path: Path, sampler_name: str) -> bool:
    """PSNR against the full samples vs model cost: the plain sampler as a line, each accelerated
    method as a point (hollow when its calibration was refused).  False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    plain = sorted((r for r in rows if r["kind"] != "accelerated"), key=lambda r: r["model cost"])
    finite = [r for r in plain if r["kind"] == "plain"]
    ax.plot([r["model cost"] for r in finite], [r["PSNR vs full"] for r in finite], "o-", color="gray",
            label=f"plain {sampler_name}, large model")
    for r in rows:
        if r["kind"] == "accelerated":
            refused = r.get("calibration") == "REFUSED"
            ax.plot(r["model cost"], r["PSNR vs full"], "s", mfc="none" if refused else None,
                    label=r["method"] + (" (refused)" if refused and "refused" not in r["method"] else ""))
    ax.set_xlabel("model cost (multiply-adds; 1 = the full run)")
    ax.set_ylabel("PSNR vs the full run (dB, higher is closer)")
    ax.set_title("speed/quality trade-off at equal model cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
