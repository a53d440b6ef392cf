"""Sample-quality metrics of the zoo, all in float64 on the host.

* Frechet distance between Gaussians fitted to classifier features (the FID recipe, with the
  zoo classifier's penultimate features instead of Inception):

      FD = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}

  Both square roots are of symmetric positive semi-definite matrices and use ``eigh``
  (negative round-off eigenvalues clamped to 0); no scipy needed.
* Classifier confidence: mean over samples of max_k softmax(logits)_k, and agreement of the
  predicted class with the requested label; class balance: the predicted-class histogram and its
  entropy divided by log 10 (1 = perfectly balanced).
* PSNR / RMSE of samples against reference samples from the same noise, images clamped to
  [-1, 1] (data range 2):  PSNR = 10 log10(2^2 / MSE) per sample, averaged over the batch;
  RMSE = sqrt(mean squared error over all pixels).
"""
from __future__ import annotations

import math

import torch

from .data import digits
from .loader import load_classifier

DATA_RANGE = 2.0
_cache: dict = {}


def _classifier(classifier):
    if classifier is not None:
        return classifier
    if "classifier" not in _cache:
        _cache["classifier"] = load_classifier()
    return _cache["classifier"]


def _check_images(images, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, 16, 16):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor [B, 1, 16, 16], got {shape}")
    if images.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    return images


@torch.no_grad()
def features(images: torch.Tensor, classifier=None, batch: int = 512) -> torch.Tensor:
    """Penultimate classifier features ``[B, d]`` (float64) of images ``[B, 1, 16, 16]``."""
    net = _classifier(classifier)
    images = _check_images(images).detach().to(torch.float32).cpu()
    return torch.cat([net.features(images[i:i + batch]) for i in range(0, images.shape[0], batch)]).double()


@torch.no_grad()
def logits(images: torch.Tensor, classifier=None) -> torch.Tensor:
    net = _classifier(classifier)
    return net(_check_images(images).detach().to(torch.float32).cpu()).double()


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance_from_features(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[n_a, d]``, ``[n_b, d]``."""
    if feat_a.ndim != 2 or feat_b.ndim != 2 or feat_a.shape[1] != feat_b.shape[1]:
        raise ValueError(f"feature sets must be [n, d] with the same d, "
                         f"got {tuple(feat_a.shape)}, {tuple(feat_b.shape)}")
    if feat_a.shape[0] < 2 or feat_b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 rows to fit a covariance")
    a, b = feat_a.double(), feat_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(fd.clamp_min(0))


def data_features(split: str = "all", classifier=None) -> torch.Tensor:
    """Features of the data set's ``split`` (cached for the default classifier)."""
    key = ("features", split)
    if classifier is not None:
        return features(digits(split)[0], classifier)
    if key not in _cache:
        _cache[key] = features(digits(split)[0])
    return _cache[key]


def frechet_distance(samples: torch.Tensor, reference: torch.Tensor | str = "all", classifier=None) -> float:
    """Frechet distance of ``samples`` to ``reference`` images, or to a data split by name."""
    ref = data_features(reference, classifier) if isinstance(reference, str) else features(reference, classifier)
    return frechet_distance_from_features(features(samples, classifier), ref)


def confidence(samples: torch.Tensor, labels: torch.Tensor | None = None, classifier=None) -> dict:
    """``{"confidence": mean max-probability, "agreement": fraction predicted == labels (if given)}``."""
    probs = torch.softmax(logits(samples, classifier), dim=1)
    out = {"confidence": float(probs.max(1).values.mean())}
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()
        if labels.shape != (samples.shape[0],):
            raise ValueError(f"labels must have shape [{samples.shape[0]}], got {tuple(labels.shape)}")
        out["agreement"] = float((probs.argmax(1) == labels).double().mean())
    return out


def class_balance(samples: torch.Tensor, classifier=None, num_classes: int = 10) -> dict:
    """Histogram of predicted classes (fractions) and its entropy / log(num_classes)."""
    pred = logits(samples, classifier).argmax(1)
    hist = torch.bincount(pred, minlength=num_classes).double() / pred.numel()
    nz = hist[hist > 0]
    return {"histogram": hist.tolist(), "entropy": float(-(nz * nz.log()).sum() / math.log(num_classes))}


def psnr_rmse(samples: torch.Tensor, reference: torch.Tensor) -> dict:
    """``{"psnr": mean per-sample PSNR in dB, "rmse": RMSE}`` of samples against ``reference``
    (same shape; both clamped to [-1, 1]).  Identical samples give ``psnr = inf``, ``rmse = 0``."""
    if samples.shape != reference.shape:
        raise ValueError(f"samples {tuple(samples.shape)} and reference {tuple(reference.shape)} differ in shape")
    a = samples.detach().double().cpu().clamp(-1, 1)
    b = reference.detach().double().cpu().clamp(-1, 1)
    mse = (a - b).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(DATA_RANGE ** 2 / mse)).mean()
    return {"psnr": float(psnr), "rmse": float(mse.mean().sqrt())}
