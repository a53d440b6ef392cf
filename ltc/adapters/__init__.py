"""Adapters to other frameworks.  Each lives in its own submodule and imports its framework only
there (``import ltc.adapters.diffusers`` needs the ``diffusers`` extra; ``import ltc`` never does)."""
