"""How big an update is on the wire: parameter count and bytes of named arrays."""

from __future__ import annotations

import numpy as np

from secure_ffm.models.base import NamedArrays


def update_parameter_count(arrays: NamedArrays) -> int:
    """Number of scalars in ``arrays``."""
    return sum(int(np.asarray(a).size) for a in arrays.values())


def update_nbytes(arrays: NamedArrays) -> int:
    """Bytes of the raw array payloads in ``arrays`` (names and framing not counted)."""
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())
