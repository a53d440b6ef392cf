"""Training script of the zoo (CPU friendly).  Run as a module::

    python -m ltc.zoo.train denoiser --name unet_small --channels 16 --steps 2500
    python -m ltc.zoo.train classifier --steps 1500
    python -m ltc.zoo.train export-data            # dev only: needs scikit-learn
    python -m ltc.zoo.train pin                    # dev only: re-pin the shipped files (ltc/zoo/pinned.json)

Denoisers learn eps prediction on the training split of :mod:`.data` with the DDPM objective

    L = E_{x0, y, t, eps} || eps_theta(alpha_t x0 + sigma_t eps, t, y') - eps ||^2,

t uniform over the integer training steps 0..T-1 of the schedule (``Schedule.vp("linear")``,
T = 1000), y' = y with probability 0.9 and the null class otherwise (for classifier-free
guidance).  AdamW with linear warm-up and cosine decay; the saved weights are an exponential
moving average.  Each run writes ``weights/<name>.safetensors`` (metadata: architecture, schedule,
prediction, null class, MACs, command, data digest, wall time) and adds its loss curve to
``bench/results/zoo_training.json``.  Files are written by :func:`ltc.io.write_checked` (formats
:data:`ltc.zoo.loader.WEIGHTS_FORMAT`, :data:`ltc.zoo.data.DATA_FORMAT`); a file written into the
package's folders is refused by the loaders until ``python -m ltc.zoo.train pin`` pins it.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..schedule import Schedule
from . import data as D
from .nets import NULL_CLASS, Classifier, UNet, count_macs
from ..io import pin_shipped_files, write_checked
from .loader import WEIGHTS_FORMAT

WEIGHTS_DIR = Path(__file__).parent / "weights"
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "zoo_training.json"
# DDPM betas 1e-4..0.02, T = 1000; the spacing is only recorded (for sampling with ltc.zoo.schedule)
SCHEDULE = Schedule.vp("linear", spacing="trailing")


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def _ema_update(ema, net, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.mul_(d).add_(p, alpha=1 - d)


def _save(net, name: str, metadata: dict, out_dir: Path) -> Path:
    """Write ``out_dir/<name>.safetensors`` (float32 tensors; metadata values stringified)."""
    tensors = {k: v.detach().to(torch.float32) for k, v in net.state_dict().items()}
    path = Path(out_dir) / f"{name}.safetensors"
    write_checked(path, tensors, {k: str(v) for k, v in metadata.items()}, WEIGHTS_FORMAT)
    return path


def _record(name: str, entry: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("machine", {"platform": platform.platform(), "python": platform.python_version(),
                                   "torch": torch.__version__, "threads": torch.get_num_threads()})
    results.setdefault("models", {})[name] = entry
    RESULTS.write_text(json.dumps(results, indent=1))


def _command() -> str:
    return "python -m ltc.zoo.train " + " ".join(sys.argv[1:])


def train_denoiser(args) -> None:
    torch.manual_seed(args.seed)
    x_train, y_train = D.digits("train")
    net = UNet(args.channels, tuple(args.multipliers), args.emb_dim)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    abar = torch.as_tensor(SCHEDULE.alphas_cumprod, dtype=torch.float32)
    T = SCHEDULE.num_train_timesteps
    curve, running, start = [], 0.0, time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(0, x_train.shape[0], (args.batch,))
        x0, y = x_train[idx], y_train[idx].clone()
        y[torch.rand(args.batch) < args.label_dropout] = NULL_CLASS
        t = torch.randint(0, T, (args.batch,))
        eps = torch.randn_like(x0)
        a = abar[t].sqrt()[:, None, None, None]
        s = (1 - abar[t]).sqrt()[:, None, None, None]
        loss = F.mse_loss(net(a * x0 + s * eps, t.float(), y=y), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        _ema_update(ema, net, step, args.ema)
        running += float(loss.detach())
        if (step + 1) % args.log_every == 0:
            curve.append([step + 1, running / args.log_every, time.perf_counter() - start])
            print(f"step {step + 1}/{args.steps} loss {running / args.log_every:.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            running = 0.0
    wall = time.perf_counter() - start
    macs = count_macs(ema, torch.zeros(1, 1, 16, 16), torch.zeros(1), y=torch.zeros(1, dtype=torch.long))
    meta = {"kind": "denoiser", "name": args.name,
            "architecture": json.dumps(ema.config), "schedule": json.dumps(SCHEDULE.config()),
            "prediction": "eps", "null_class": NULL_CLASS, "macs_per_sample": macs,
            "flops_per_sample": 2 * macs, "training_command": _command(),
            "train_steps": args.steps, "batch": args.batch, "wall_time_s": round(wall, 1),
            "final_loss": round(curve[-1][1], 5) if curve else None, "data_digest": D.data_digest(),
            "data_split": "train (first 1500 images)", "weights": f"EMA decay {args.ema}"}
    path = _save(ema, args.name, meta, Path(args.out))
    _record(args.name, {"command": _command(), "wall_time_s": wall, "macs_per_sample": macs,
                        "params": sum(p.numel() for p in ema.parameters()), "threads": torch.get_num_threads(),
                        "loss_curve": {"columns": ["step", "mean_loss", "elapsed_s"], "rows": curve}})
    print(f"saved {path} ({wall:.0f}s, {macs / 1e6:.1f}M MACs/sample); in the package folder, pin it: "
          "python -m ltc.zoo.train pin")


def _shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Random integer translation by up to ``max_shift`` pixels (padding with the background -1)."""
    pad = F.pad(x, [max_shift] * 4, value=-1.0)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()
        out[i] = pad[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return out


def train_classifier(args) -> None:
    torch.manual_seed(args.seed)
    x_train, y_train = D.digits("train")
    x_held, y_held = D.digits("heldout")
    net = Classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    curve, running, start = [], 0.0, time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(0, x_train.shape[0], (args.batch,))
        x = _shift(x_train[idx], 1)
        x = x + args.noise * torch.rand(x.shape[0], 1, 1, 1) * torch.randn_like(x)
        loss = F.cross_entropy(net(x), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if (step + 1) % args.log_every == 0:
            curve.append([step + 1, running / args.log_every, time.perf_counter() - start])
            print(f"step {step + 1}/{args.steps} loss {running / args.log_every:.4f}", flush=True)
            running = 0.0
    wall = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        acc = float((net(x_held).argmax(1) == y_held).float().mean())
    macs = count_macs(net, torch.zeros(1, 1, 16, 16))
    meta = {"kind": "classifier", "name": args.name,
            "architecture": json.dumps(net.config), "macs_per_sample": macs,
            "training_command": _command(), "train_steps": args.steps, "wall_time_s": round(wall, 1),
            "heldout_accuracy": round(acc, 4), "data_digest": D.data_digest(),
            "data_split": "train (first 1500 images); accuracy on held-out (last 297)"}
    path = _save(net, args.name, meta, Path(args.out))
    _record(args.name, {"command": _command(), "wall_time_s": wall, "heldout_accuracy": acc,
                        "macs_per_sample": macs, "threads": torch.get_num_threads(),
                        "loss_curve": {"columns": ["step", "mean_loss", "elapsed_s"], "rows": curve}})
    print(f"saved {path} ({wall:.0f}s, held-out accuracy {acc:.4f}); in the package folder, pin it: "
          "python -m ltc.zoo.train pin")


def export_data(args) -> None:
    """Development only: write data/digits.safetensors from scikit-learn's copy of the data."""
    import numpy as np
    from sklearn import __version__ as sk_version
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.uint8))
    if not np.array_equal(images.numpy(), d.images):
        raise ValueError("digits are not integers in 0..16")
    meta = {"source": f"sklearn.datasets.load_digits (scikit-learn {sk_version}), the UCI Optical "
                      "Recognition of Handwritten Digits test set",
            "licence": "data: CC BY 4.0 (UCI ML Repository, Alpaydin & Kaynak 1998); "
                       "distributed by scikit-learn (BSD-3-Clause)",
            "layout": "images uint8 [1797, 8, 8] values 0..16; labels int64 [1797]",
            "split": "train = rows 0..1499, held-out = rows 1500..1796"}
    write_checked(D.DATA_PATH, {"images": images.contiguous(), "labels": torch.from_numpy(d.target.astype(np.int64))},
                  meta, D.DATA_FORMAT)
    print(f"wrote {D.DATA_PATH}; pin it: python -m ltc.zoo.train pin")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ltc.zoo.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    den = sub.add_parser("denoiser", help="train a class-conditional eps-prediction UNet")
    den.add_argument("--name", required=True)
    den.add_argument("--channels", type=int, default=16)
    den.add_argument("--multipliers", type=int, nargs="+", default=[1, 2, 2])
    den.add_argument("--emb-dim", type=int, default=128)
    den.add_argument("--steps", type=int, default=2500)
    den.add_argument("--batch", type=int, default=128)
    den.add_argument("--lr", type=float, default=2e-3)
    den.add_argument("--warmup", type=int, default=100)
    den.add_argument("--ema", type=float, default=0.999)
    den.add_argument("--label-dropout", type=float, default=0.1)
    cls = sub.add_parser("classifier", help="train the feature classifier")
    cls.add_argument("--name", default="classifier")
    cls.add_argument("--steps", type=int, default=1500)
    cls.add_argument("--batch", type=int, default=128)
    cls.add_argument("--lr", type=float, default=2e-3)
    cls.add_argument("--warmup", type=int, default=50)
    cls.add_argument("--noise", type=float, default=0.2)
    for p in (den, cls):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--log-every", type=int, default=50)
        p.add_argument("--out", default=str(WEIGHTS_DIR))
    sub.add_parser("export-data", help="dev only: export the digits from scikit-learn")
    sub.add_parser("pin", help="dev only: verify the shipped files and pin their sha256 in ltc/zoo/pinned.json")
    args = parser.parse_args(argv)
    if args.what == "export-data":
        return export_data(args)
    if args.what == "pin":
        for name, digest in pin_shipped_files().items():
            print(f"{digest}  {name}")
        return None
    torch.set_num_threads(args.threads)
    (train_denoiser if args.what == "denoiser" else train_classifier)(args)


if __name__ == "__main__":
    main()
