"""A run's set-up without the cyclic garbage collector's full passes over torch's objects.

Importing torch creates several hundred thousand Python objects (torch's operator registrations, decompositions and
``torch.export`` modules). While they are being created, Python's cyclic collector runs its generation-2 pass a few
times, and each pass walks every object alive, so the passes cost more the further the import has come. Measured on
this project's machine (2026-12-06, quiet, interleaved fresh processes, 3 each): ``import torch`` took 1.04-1.07 s
and the engine's own modules another 0.12-0.13 s with the collector on, against 0.91-0.94 s and 0.04-0.05 s with it
paused; loading the data and building the model afterwards took the same 0.03 s either way.

:func:`collector_paused` turns the collector off for the block and, after it, moves every object still alive into
the permanent generation (``gc.freeze``), which later collections skip: the libraries' objects live as long as the
process, so scanning them again during training finds nothing. Nothing is leaked that reference counting frees; only
cyclic garbage created inside the block and still unreachable at its end stays. ``train`` wraps its imports and the
run's set-up (data, model, protocol) in it; ``pipeline``, ``deploy``, ``sweep`` and ``attack`` wrap their imports.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block; afterwards the objects alive are frozen (``gc.freeze``) and
    the collector is back as it was (still off if the caller had turned it off), also when the block raises."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
