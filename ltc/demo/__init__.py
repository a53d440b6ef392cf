"""The demos of ``python -m ltc demo``: the zoo models (:mod:`.zoo`, the main job) and the exact
oracle sampler table (:mod:`.oracle`, ``--oracle``).  Around them: where the LTC calibrations come
from (:mod:`.calibrations`: the user's folder, then the shipped files), what the rows conclude
(:mod:`.report`: timing warnings, the advice line), the PNGs (:mod:`.pictures`) and plain-text
tables (:mod:`.table`)."""
