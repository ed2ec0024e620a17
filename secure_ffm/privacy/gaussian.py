"""Pure numeric core of update-level DP: L2 norms, clipping and Gaussian noise on named arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from secure_ffm.engine.wire import NamedArrays
from secure_ffm.privacy.noise import NoiseStream


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all arrays taken together as one vector (accumulated in float64)."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values()))


def clip_l2(arrays: Mapping[str, np.ndarray], max_norm: float) -> tuple[NamedArrays, float]:
    """Scale ``arrays`` by ``min(1, max_norm / norm)``; returns the clipped arrays and the norm before clipping."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = l2_norm(arrays)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: (np.asarray(v) * factor).astype(np.asarray(v).dtype) for k, v in arrays.items()}, norm


def add_gaussian_noise(arrays: Mapping[str, np.ndarray], std: float, rng: np.random.Generator | NoiseStream) -> NamedArrays:
    """``arrays + N(0, std^2)`` element-wise, drawn from ``rng`` (a NumPy generator or a secret
    :class:`~secure_ffm.privacy.noise.NoiseStream`), keeping each array's dtype."""
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")
    if std == 0:
        return {k: np.array(v, copy=True) for k, v in arrays.items()}
    if isinstance(rng, np.random.Generator):
        draw = lambda shape: rng.normal(0.0, std, size=shape)  # noqa: E731
    else:
        draw = lambda shape: rng.normal(tuple(shape), std)  # noqa: E731
    return {k: (np.asarray(v, dtype=np.float64) + draw(np.shape(v))).astype(np.asarray(v).dtype) for k, v in arrays.items()}
