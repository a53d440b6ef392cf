"""Sample-quality metrics of the zoo, all in float64 on the host.

* Frechet distance between Gaussians fitted to classifier features (the FID recipe, with the
  zoo classifier's penultimate features instead of Inception):

      FD = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^{1/2}

  computed by torchmetrics' ``FrechetInceptionDistance`` (the ``metrics`` extra) with the zoo
  classifier as its feature network (:class:`ClassifierFeatures`, float64 features), so the
  number is the one the ecosystem computes.  tr (S_a S_b)^{1/2} is the sum of the square roots of
  the eigenvalues of S_a S_b; with fewer samples than feature dimensions the covariances are
  singular and each of their ~zero eigenvalues contributes round-off of order
  sqrt(eps_64 * lambda_max) ~ 1e-8, so FD is then reproducible to about 1e-7 relative, not 1e-15.
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
from torch import nn

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


class ClassifierFeatures(nn.Module):
    """The zoo classifier's penultimate features as a torchmetrics feature extractor:
    ``forward(images [B, 1, 16, 16]) -> [B, d]`` float64 (``num_features = d``)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.head.in_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(_check_images(images).detach().to(torch.float32).cpu()).double()


class _GivenFeatures(nn.Module):
    """Identity feature extractor: the rows given to ``update`` are the features ``[B, d]`` (float64)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.double()


def _fid(feature: nn.Module):
    """torchmetrics' ``FrechetInceptionDistance`` on ``feature``, keeping its reference features
    across ``reset()``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:
        raise ImportError("the Frechet distance is computed by torchmetrics, which is not installed: "
                          "pip install torchmetrics (the 'metrics' extra; see the install command in "
                          "the README)") from err
    return FrechetInceptionDistance(feature=feature, reset_real_features=False)


def _update(metric, rows: torch.Tensor, real: bool, batch: int = 512) -> None:
    for i in range(0, rows.shape[0], batch):
        metric.update(rows[i:i + batch], real=real)


def _compute(metric, samples: torch.Tensor, batch: int = 512) -> float:
    metric.reset()  # forgets the previous samples, keeps the reference
    _update(metric, samples, real=False, batch=batch)
    return float(metric.compute())


def frechet_distance_from_features(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[n_a, d]``, ``[n_b, d]``
    (each n >= 2), by torchmetrics in float64."""
    for name, f in (("feat_a", feat_a), ("feat_b", feat_b)):
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            raise ValueError(f"{name} must be a tensor [n, d], got "
                             f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
        if f.shape[0] < 2:
            raise ValueError(f"{name} has {f.shape[0]} row(s); a covariance needs at least 2")
    if feat_a.shape[1] != feat_b.shape[1]:
        raise ValueError(f"feature sets must have the same d, got {tuple(feat_a.shape)}, {tuple(feat_b.shape)}")
    metric = _fid(_GivenFeatures(feat_a.shape[1]))
    _update(metric, feat_b.detach().cpu(), real=True)
    return _compute(metric, feat_a.detach().cpu())


def data_features(split: str = "all", classifier=None) -> torch.Tensor:
    """Features of the data set's ``split`` (cached for the default classifier)."""
    key = ("features", split)
    if classifier is not None:
        return features(digits(split)[0], classifier)
    if key not in _cache:
        _cache[key] = features(digits(split)[0])
    return _cache[key]


def frechet_metric(reference: torch.Tensor | str = "all", classifier=None):
    """A torchmetrics ``FrechetInceptionDistance`` on the classifier's features (:class:`ClassifierFeatures`)
    holding ``reference`` images ``[B, 1, 16, 16]`` (or the data split of that name) as its real
    set; ``reset()`` keeps them.  The one for a data split and the default classifier is cached."""
    key = ("fid", reference) if isinstance(reference, str) and classifier is None else None
    if key is not None and key in _cache:
        return _cache[key]
    metric = _fid(ClassifierFeatures(_classifier(classifier)))
    images = digits(reference)[0] if isinstance(reference, str) else _check_images(reference, "reference")
    _update(metric, images, real=True)
    if key is not None:
        _cache[key] = metric
    return metric


def frechet_distance(samples: torch.Tensor, reference: torch.Tensor | str = "all", classifier=None) -> float:
    """Frechet distance of ``samples`` ``[B, 1, 16, 16]`` (B >= 2) to ``reference`` images, or to a
    data split by name, in the zoo classifier's feature space (torchmetrics, float64)."""
    _check_images(samples, "samples")
    if samples.shape[0] < 2:
        raise ValueError(f"samples has {samples.shape[0]} image(s); a covariance needs at least 2")
    return _compute(frechet_metric(reference, classifier), samples)


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
