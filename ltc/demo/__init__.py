"""The demos of ``python -m ltc demo``: the zoo models (:mod:`.zoo`, the main job) and the exact
oracle sampler table (:mod:`.oracle`, ``--oracle``).  Plain-text tables: :mod:`.table`."""
