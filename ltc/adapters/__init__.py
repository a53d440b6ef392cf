"""Adapters to other frameworks, each in its own submodule:

* :mod:`ltc.adapters.diffusers` -- schedule, sampler, prediction and model from diffusers objects
  (imports diffusers: needs the ``diffusers`` extra);
* :mod:`ltc.adapters.kdiffusion` -- a k-diffusion denoiser and its ``sigmas`` as an ltc model and
  schedule (imports nothing of k-diffusion).

``import ltc`` never imports a framework."""
