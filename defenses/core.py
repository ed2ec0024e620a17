"""Pure numeric core of the update-level defenses: pruning, quantization, clipping, noise.

Every function takes arrays (and an explicit seeded generator where it draws), returns new
arrays of the input's dtype and shape, and never modifies its input. The transforms in
:mod:`defenses.transforms` apply them to a client's update.

L2 clipping and Gaussian noise are the DP core's own functions
(:func:`secure_ffm.privacy.gaussian.clip_l2`, :func:`~secure_ffm.privacy.gaussian.add_gaussian_noise`),
re-exported here so that one module holds the whole numeric core of the defenses.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from secure_ffm.privacy.gaussian import add_gaussian_noise, clip_l2, l2_norm

__all__ = [
    "add_gaussian_noise",
    "clip_l2",
    "l2_norm",
    "pruned_count",
    "prune_by_magnitude",
    "quantization_step",
    "quantize_sign",
    "quantize_uniform",
    "top_fraction",
]


def pruned_count(size: int, fraction: float) -> int:
    """``floor(fraction * size)``, with ``fraction`` read as the decimal it is written as.

    ``0.29 * 100`` is ``28.999999999999996`` in binary floating point; reading 0.29 as the
    decimal 29/100 (its shortest ``repr``) gives the 29 a user expects.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return math.floor(Fraction(repr(float(fraction))) * size)


def _smallest_mask(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly ``k`` entries of the 1-D ``magnitude``: the smallest, ties to the lower index.

    Linear time: a partition finds the k-th smallest value t; every entry below t is taken,
    then entries equal to t in index order until there are k.
    """
    mask = np.zeros(magnitude.shape, dtype=bool)
    if k <= 0:
        return mask
    if k >= magnitude.size:
        mask[:] = True
        return mask
    threshold = np.partition(magnitude, k - 1)[k - 1]
    mask = magnitude < threshold
    ties = np.flatnonzero(magnitude == threshold)[: k - int(mask.sum())]
    mask[ties] = True
    return mask


def prune_by_magnitude(array: np.ndarray, fraction: float) -> np.ndarray:
    """Zero exactly the ``pruned_count(array.size, fraction)`` entries of smallest ``|value|``.

    Ties in magnitude are broken by position: of equal magnitudes, the entry earlier in C
    (row-major) order is pruned first, so the result is deterministic. The other entries are
    kept exactly. This is the gradient pruning that Zhu et al., "Deep Leakage from Gradients"
    (NeurIPS 2019, Sec. 5) found to stop DLG once more than about 20% is pruned.
    """
    a = np.asarray(array)
    out = a.copy()
    k = pruned_count(a.size, fraction)
    if k:
        flat = out.reshape(-1)
        flat[_smallest_mask(np.abs(a).reshape(-1), k)] = 0
    return out


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``pruned_count(len(scores), fraction)`` largest scores, ascending; ties to the lower index."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    k = pruned_count(s.size, fraction)
    order = np.argsort(-s, kind="stable")  # NaN sorts last: never chosen before a number
    return np.sort(order[:k])


def quantization_step(array: np.ndarray, bits: int) -> float:
    """The grid spacing of :func:`quantize_uniform`: ``2 max|x| / (2^bits - 1)`` (0 for an all-zero array)."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be 1 to 32, got {bits}")
    a = np.asarray(array)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    if not math.isfinite(scale):
        raise ValueError("cannot quantize an array with non-finite values")
    return 2.0 * scale / (2**bits - 1)


def quantize_uniform(array: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding onto ``2^bits`` evenly spaced levels over ``[-m, m]``, ``m = max|x|`` of this array.

    With step ``s = 2m / (2^bits - 1)``, a value between the levels ``l`` and ``l + s`` becomes
    ``l + s`` with probability ``(x - l) / s`` and ``l`` otherwise, so ``E[q] = x`` (unbiased)
    and ``|q - x| <= s`` for every coordinate; the variance is at most ``s^2 / 4`` per coordinate.
    This is QSGD's stochastic quantizer (Alistarh et al., NeurIPS 2017) with the max-norm as the
    scale. Only the dequantized values are returned (the level index times ``s`` minus ``m``):
    what a server would see after decoding ``bits`` bits per coordinate plus the scale.
    """
    a = np.asarray(array)
    step = quantization_step(a, bits)
    if step == 0.0:
        return np.zeros_like(a)
    scale = step * (2**bits - 1) / 2.0
    position = (a.astype(np.float64) + scale) / step  # in [0, 2^bits - 1]
    lower = np.floor(position)
    up = rng.random(a.shape) < (position - lower)
    level = np.clip(lower + up, 0, 2**bits - 1)
    return (level * step - scale).astype(a.dtype)


def quantize_sign(array: np.ndarray) -> np.ndarray:
    """``sign(x) * mean|x|``: one bit per coordinate plus one scale per array (0 stays 0).

    signSGD (Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems",
    ICML 2018) sends ``sign(x)``; the ``mean|x| = ||x||_1 / d`` scale is that of scaled sign
    compression (Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019), which keeps
    the update's L1 norm. Deterministic and biased.
    """
    a = np.asarray(array)
    if a.size == 0:
        return a.copy()
    scale = float(np.mean(np.abs(a), dtype=np.float64))
    if not math.isfinite(scale):
        raise ValueError("cannot quantize an array with non-finite values")
    return (np.sign(a).astype(np.float64) * scale).astype(a.dtype)
