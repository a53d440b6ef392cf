"""Distribution distance to held-out digits, with paired bootstrap intervals: how T-Stitch is judged.

T-Stitch changes the model that takes some of the steps, so its samples are not meant to equal the
large model's; they are meant to be as good.  "As good" is measured here on the distribution:

    FD(X) = Frechet distance between Gaussians fitted to the zoo classifier's features of the
            samples X [n, 1, 16, 16] and of the 297 held-out digits (rows 1500..1796 of the data
            set, seen by no model in training),

computed by :func:`ltc.zoo.metrics.frechet_distance_from_features` (torchmetrics, float64).

Resamples (one ``torch.Generator`` seeded with ``seed``): resample r = 1..R draws indices I_r of
the n samples with replacement *within each label* (sample i was drawn for label ``labels[i]``;
the rows hold a fixed number of samples per label, and an unstratified resample adds a
class-proportion noise the rows do not have: at n = 1500 it made the interval ~4x too wide), and

    FD_r(row) = FD(features(row)[I_r], features(held-out)).

A resample is a count vector c_r (sum n), so its statistics are weighted ones,

    mu_r = sum_i c_ri f_i / n,    S_r = (sum_i c_ri f_i f_i^T - n mu_r mu_r^T) / (n - 1),

exactly those torchmetrics computes from the repeated rows; FD_r uses torchmetrics' formula
|mu_r - mu_h|^2 + tr S_r + tr S_h - 2 sum_k Re sqrt(lambda_k(S_r S_h)), batched over the
resamples (one torchmetrics object per resample costs ~15 ms; the tests check the two agree).
The held-out digits are the fixed yardstick and are not resampled: drawing 297 images with
replacement repeats ~1/3 of them, which shrinks their covariance and moved the 97.5% quantile of
FD from 1.52 to 2.65 (unet_small, 1500 samples) -- an interval around another quantity.  The training digits' own distance
to them is the floor of this yardstick.

Bias-corrected value and interval (the basic bootstrap): FD is biased upward with few samples
(the full large-model run: 1.57 at n = 100, 1.36 at n = 2000), and a resample, which repeats
samples, is biased further, so the plain percentile interval sits above FD at small n (at n = 100
its lower end was above FD itself).  With FD-hat on all samples and q_p the p-quantile of the FD_r,

    value = 2 FD-hat - q_0.5,       interval = [2 FD-hat - q_(1+level)/2, 2 FD-hat - q_(1-level)/2],

the bootstrap's own estimate of the bias (q_0.5 - FD-hat) taken off (Efron).  The value always
lies in its interval; the correction removes part of the small-n bias, not all of it (the full run
above: 1.37 from n = 100; random subsets of 100 training digits: 0.3 of a 1.0-1.7 excess over
all 1500), so compare rows at equal n -- as :func:`judge` does.  :attr:`Distances.point` keeps
the uncorrected FD-hat (torchmetrics' number).

Paired rows: every row given to :func:`judge` holds n samples where sample i of each row starts
from the same noise and label.  All rows share the same I_r, so the same construction on

    FD_r(a) - FD_r(b)

gives the interval of the *difference* between two rows -- far tighter than two separate
intervals, because the noises and labels are common: it resolves differences much smaller than a
row's own sampling uncertainty (noise of 0.002 on the pixels of real digits moves FD by 0.002,
outside its paired interval, while the row's own interval is 0.3 wide).  A verdict needs both:
:meth:`Distances.verdict` calls row a ``"WORSE"`` than row b when the paired interval of
FD(a) - FD(b) lies above 0 *and* a's value lies above b's interval, ``"better"`` when below 0 and
below b's interval, and ``"same"`` otherwise (a difference that is not significant, or smaller
than b's own sampling uncertainty at this n).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .metrics import data_features, features, frechet_distance_from_features

REFERENCE_SPLIT = "heldout"


@dataclass(frozen=True)
class Interval:
    """A bias-corrected value and its basic-bootstrap interval ``[low, high]`` at ``level``;
    ``raw`` is the uncorrected estimate on all samples (see the module docstring)."""

    value: float
    low: float
    high: float
    level: float
    raw: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def basic_interval(raw: float, draws: torch.Tensor, level: float) -> Interval:
    """``value = 2 raw - median(draws)``, ``[2 raw - q_hi, 2 raw - q_lo]`` (the basic bootstrap)."""
    q = torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2], dtype=torch.float64)
    low, median, high = torch.quantile(draws.double(), q).tolist()
    return Interval(2 * raw - median, 2 * raw - high, 2 * raw - low, level, raw)


@dataclass(frozen=True)
class Distances:
    """FD of each row to the held-out digits on all samples (:attr:`point`, uncorrected) and its
    ``resamples`` bootstrap draws (:attr:`draws`, ``[R]`` per row, all rows on the same resampled
    indices); :meth:`interval`, :meth:`difference` and :meth:`verdict` read them."""

    point: dict
    draws: dict
    level: float
    samples: int

    def _check(self, name: str) -> None:
        if name not in self.point:
            raise KeyError(f"no row named {name!r}; rows: {list(self.point)}")

    def interval(self, name: str) -> Interval:
        """FD of row ``name``: bias-corrected value and interval."""
        self._check(name)
        return basic_interval(self.point[name], self.draws[name], self.level)

    def difference(self, a: str, b: str) -> Interval:
        """FD(a) - FD(b), bias-corrected, with its paired interval (negative: ``a`` is closer to the data)."""
        self._check(a)
        self._check(b)
        return basic_interval(self.point[a] - self.point[b], self.draws[a] - self.draws[b], self.level)

    def verdict(self, a: str, b: str) -> str:
        """``"better"``, ``"same"`` or ``"WORSE"``: row ``a`` against row ``b`` (the paired interval
        of FD(a) - FD(b) excludes 0 and a's value lies outside b's interval; see the module docstring)."""
        d, own, value = self.difference(a, b), self.interval(b), self.interval(a).value
        if d.high < 0 and value < own.low:
            return "better"
        if d.low > 0 and value > own.high:
            return "WORSE"
        return "same"


def _check_args(samples, labels, resamples, level, seed) -> int:
    if not isinstance(samples, Mapping) or not samples:
        got = "an empty dict" if isinstance(samples, Mapping) else type(samples).__name__
        raise ValueError(f"samples must be a non-empty dict of row name -> images [n, 1, 16, 16], got {got}")
    sizes = {}
    for name, x in samples.items():
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, 16, 16):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"samples[{name!r}] must be a tensor [n, 1, 16, 16], got {shape}")
        sizes[name] = x.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"samples must hold the same number of samples in every row (sample i of each row "
                         f"from the same noise, for the paired intervals), got {sizes}")
    n = next(iter(sizes.values()))
    if n < 2:
        raise ValueError(f"samples holds {n} sample per row; a covariance needs at least 2")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.dtype.is_floating_point \
            or labels.dtype.is_complex or labels.dtype == torch.bool:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [{n}] (the label each sample was drawn for), got {got}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 10:
        raise ValueError(f"resamples must be an int >= 10, got {resamples!r}")
    if isinstance(level, bool) or not isinstance(level, float) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return n


def stratified_resample(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices ``[n]``: position i holds a uniform draw (with replacement) among the samples of
    label ``labels[i]``, so ``labels[result] == labels`` and every label keeps its count."""
    out = torch.empty(labels.shape[0], dtype=torch.long)
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        out[members] = members[torch.randint(0, members.shape[0], (members.shape[0],), generator=generator)]
    return out


def judge(samples: Mapping[str, torch.Tensor], labels: torch.Tensor, *, resamples: int = 200, level: float = 0.95,
          seed: int = 0, classifier=None) -> Distances:
    """FD of every row of ``samples`` (name -> images ``[n, 1, 16, 16]``; sample i of every row from
    the same noise, drawn for label ``labels[i]``) to the held-out digits, with paired basic-bootstrap
    intervals of ``resamples`` draws stratified by label (see the module docstring).
    ``classifier``: the feature network (default: the zoo classifier)."""
    n = _check_args(samples, labels, resamples, level, seed)
    reference = data_features(REFERENCE_SPLIT, classifier)
    feats = {name: features(x, classifier) for name, x in samples.items()}
    point = {name: frechet_distance_from_features(f, reference) for name, f in feats.items()}
    if not all(math.isfinite(v) for v in point.values()):
        raise ValueError(f"the Frechet distance is not finite for some rows: {point} (non-finite samples?)")
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    counts = torch.stack([torch.bincount(stratified_resample(labels, gen), minlength=n) for _ in range(resamples)])
    draws = {name: resampled_frechet(f, counts.double(), reference) for name, f in feats.items()}
    return Distances(point, draws, level, n)


def resampled_frechet(feats: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor, chunk: int = 50) -> torch.Tensor:
    """FD ``[R]`` of resamples of ``feats`` ``[n, d]`` given as ``counts`` ``[R, n]`` (how often each
    row is drawn, each summing to n) to ``reference`` ``[m, d]``: the weighted moments and the
    torchmetrics formula of the module docstring, in float64, ``chunk`` resamples at a time."""
    f, ref = feats.double(), reference.double()
    n = f.shape[0]
    mu_h, cov_h = ref.mean(0), torch.cov(ref.T)
    out = []
    for c in counts.split(chunk):
        mu = c @ f / n                                                        # [r, d]
        second = (c[:, :, None] * f).transpose(1, 2) @ f                      # [r, d, d]: sum_i c_ri f_i f_i^T
        cov = (second - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)
        root = torch.linalg.eigvals(cov @ cov_h).sqrt().real.sum(-1)
        out.append((mu - mu_h).pow(2).sum(-1) + cov.diagonal(dim1=1, dim2=2).sum(-1) + cov_h.trace() - 2 * root)
    return torch.cat(out)
