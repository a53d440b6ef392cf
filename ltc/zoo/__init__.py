"""A small zoo of trained models on real data, shipped with the package (no downloads).

Denoisers (class-conditional eps-prediction UNets on 16x16 digits, one noise schedule):
``unet_tiny``, ``unet_small`` and ``unet_large`` (~1/16, ~1/6 and 1 times the large one's
multiply-adds).  :data:`TSTITCH_PAIR` is the pair that shows what T-Stitch exploits: the tiny
model alone is measurably farther from the held-out digits than the large one
(:mod:`ltc.zoo.distance`); ``unet_small`` alone is not (bench/README.md)::

    import ltc, ltc.zoo
    small, large = (ltc.zoo.load(name) for name in ltc.zoo.TSTITCH_PAIR)
    x = ltc.sample([small, large], ltc.zoo.schedule("unet_large"), ltc.policies.TStitch([0.4]),
                   steps=20, shape=(10, 1, 16, 16), model_kwargs={"y": torch.arange(10)},
                   guidance_scale=2.0)

``load(name)`` returns an :class:`ltc.Model` (prediction type from the file) calling the network
under ``torch.no_grad``: ``fn(x [B,1,16,16], t [B], y=labels [B] int64)``; label 10 (or
``y=None``) is the null class; under guidance a ``y`` of half the batch labels the conditional half.
``load_classifier()`` gives the feature classifier of :mod:`ltc.zoo.metrics`; the distance to the
held-out digits with bootstrap intervals that judges T-Stitch is :mod:`ltc.zoo.distance`.
Data helpers: :func:`digits` (see :mod:`ltc.zoo.data`).
Exact oracles (closed-form denoisers and the exact ODE endpoint): :mod:`ltc.zoo.oracles`;
reference networks for benchmarks (DiT-S..XL, a small UNet): :mod:`ltc.zoo.reference_nets`.
Every weight file is checked when loaded (:mod:`ltc.zoo.loader`).
"""
from . import distance, metrics, oracles
from .data import data_digest, digits, raw_digits, to_model_space
from .loader import CALIBRATIONS_DIR, WEIGHTS_DIR, info, load, load_classifier, names, schedule
from .nets import NULL_CLASS

TSTITCH_PAIR = ("unet_tiny", "unet_large")  # small, large: see the module docstring

__all__ = ["TSTITCH_PAIR", "WEIGHTS_DIR", "CALIBRATIONS_DIR", "load", "load_classifier", "names", "schedule", "info", "digits", "raw_digits",
           "to_model_space", "data_digest", "distance", "metrics", "oracles", "NULL_CLASS"]
