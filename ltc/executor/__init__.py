"""The executor: walks a compiled plan.

* :mod:`.walk`    -- :class:`Walk`, the buffers, model call, checks and step of one plan walk
* :mod:`.eager`   -- the eager loop (the reference)
* :mod:`.graph`   -- ``graph=`` of :func:`ltc.sample`: capture once, replay (whole walk or per step)
* :mod:`.replay`  -- a captured walk: warm-up, capture, replay
* :mod:`.capture` -- capture backends (CUDA graphs; a recording stand-in for CPU tests)
* :mod:`.cache`   -- the cache of captured walks
"""
from .walk import CHECK_FINITE, NonFiniteError, Walk

__all__ = ["Walk", "NonFiniteError", "CHECK_FINITE"]
