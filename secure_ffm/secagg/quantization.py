"""Fixed-point encoding of real vectors into the ring Z_{2^32}, so that masked sums decode exactly.

Pairwise masking (Bonawitz et al., CCS 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning") works over a finite ring: masks are uniform
over Z_{2^32} and cancel only under modular addition. Real-valued updates are
therefore clipped to ``[-clip_range, clip_range]`` and mapped onto the integers
``0 .. levels - 1`` by an affine map with *stochastic* rounding, which is unbiased
(the expected decoded value equals the clipped input), as in the quantizer of
Bell et al., CCS 2020 (SecAgg+) and of Flower's ``secaggplus`` mod.

``levels`` is chosen so that the sum of ``n`` client encodings cannot wrap around:
``n * (levels - 1) < 2^32``. The modular sum that the server unmasks is then the
plain integer sum, and :func:`decode_sum` turns it back into the sum of the clipped
real values.

Error bound (per coordinate, worst case). With ``step = 2 * clip_range / (levels - 1)``
each client's stochastic rounding moves its value by strictly less than one ``step``,
so::

    |decode_sum(sum_i encode(x_i)) - sum_i clip(x_i)|  <  n * step

(:func:`error_bound`). float64 arithmetic adds at most about ``2^-20`` of a step per
client on top, which is negligible. The rounding errors are independent with mean 0
and standard deviation at most ``step / 2``, so the typical error is ``~ sqrt(n) * step / 2``.

The ring is fixed at 32 bits (``uint32`` arrays with numpy's wrap-around arithmetic),
matching the masks of :mod:`secure_ffm.secagg.masking`.
"""

from __future__ import annotations

import math
import operator

import numpy as np

RING_BITS = 32
"""Bits of the ring Z_{2^RING_BITS} that encodings and masks live in."""

RING_MODULUS = 1 << RING_BITS


def levels_for(num_clients: int, ring_bits: int = RING_BITS) -> int:
    """The number of quantization levels ``2^b_q`` for which ``num_clients`` encodings cannot wrap.

    ``b_q`` is the largest integer with ``num_clients * (2^b_q - 1) < 2^ring_bits``, so
    one client gets all 32 bits, two clients 31, three or four clients 30, and so on.

    Parameters
    ----------
    num_clients
        How many encoded vectors will be summed (the most that can survive a round).
    ring_bits
        Bits of the ring, at most :data:`RING_BITS`; a smaller value leaves head-room.

    Returns
    -------
    int
        ``2^b_q``, at least 2.

    Raises
    ------
    ValueError
        When ``ring_bits`` is not in ``1 .. 32`` or ``num_clients`` is too large for even
        two levels (``num_clients >= 2^ring_bits``).
    """
    n = _positive_int(num_clients, "num_clients")
    bits = operator.index(ring_bits)
    if not 1 <= bits <= RING_BITS:
        raise ValueError(f"ring_bits must be between 1 and {RING_BITS}, got {bits}")
    max_value = ((1 << bits) - 1) // n  # the largest per-client integer whose n-fold sum fits
    if max_value < 1:
        raise ValueError(f"num_clients={n} leaves no room for even 2 levels in a {bits}-bit ring")
    return 1 << ((max_value + 1).bit_length() - 1)


def quantization_step(*, clip_range: float, levels: int) -> float:
    """The real-valued distance between adjacent levels: ``2 * clip_range / (levels - 1)``."""
    c = _clip_range(clip_range)
    return 2.0 * c / (_levels(levels) - 1)


def error_bound(*, num_clients: int, clip_range: float, levels: int) -> float:
    """Worst-case absolute error per coordinate of a decoded sum: ``num_clients * step``.

    ``step = 2 * clip_range / (levels - 1)``; each client's stochastic rounding errs by
    strictly less than one step (see the module docstring). The error is measured against
    the sum of the *clipped* values: clipping itself is not counted.
    """
    n = _positive_int(num_clients, "num_clients")
    return n * quantization_step(clip_range=clip_range, levels=levels)


def encode(values: np.ndarray, *, clip_range: float, levels: int, rng: np.random.Generator) -> np.ndarray:
    """Clip ``values`` and map them onto ``0 .. levels - 1`` with unbiased stochastic rounding.

    ``x`` is clipped to ``[-clip_range, clip_range]`` and scaled to
    ``y = (x + clip_range) / step`` in ``[0, levels - 1]``; the result is ``floor(y) + 1``
    with probability ``y - floor(y)`` and ``floor(y)`` otherwise, so ``E[result] = y``.

    Parameters
    ----------
    values
        Real values of any shape (converted to float64).
    clip_range
        Positive, finite bound on each coordinate's magnitude.
    levels
        Number of levels, e.g. ``levels_for(num_clients)``; ``2 <= levels <= 2^32``.
    rng
        The seeded generator that drives the rounding (one uniform draw per element).
        Rounding needs no secrecy; the masks that hide the result do.

    Returns
    -------
    numpy.ndarray
        ``uint32`` array of ``values``' shape.

    Raises
    ------
    ValueError
        When ``values`` holds NaN or infinite entries, is complex, or a parameter is out of range.
    """
    step = quantization_step(clip_range=clip_range, levels=levels)
    x = _finite_real(values, "values")
    clipped = np.clip(x, -clip_range, clip_range)
    scaled = (clipped + clip_range) / step
    rounded = np.floor(scaled)
    rounded += rng.random(size=scaled.shape) < (scaled - rounded)
    np.clip(rounded, 0, levels - 1, out=rounded)  # float rounding at +clip_range must not reach `levels`
    return rounded.astype(np.uint32)


def decode_sum(total: np.ndarray, *, num_clients: int, clip_range: float, levels: int) -> np.ndarray:
    """The sum of ``num_clients`` clipped real vectors from the sum of their encodings.

    Parameters
    ----------
    total
        ``uint32`` array: the (unmasked) sum mod 2^32 of exactly ``num_clients`` outputs of
        :func:`encode` with the same ``clip_range`` and ``levels``.
    num_clients
        How many encodings ``total`` sums; ``num_clients * (levels - 1)`` must be below 2^32.
    clip_range, levels
        As given to :func:`encode`.

    Returns
    -------
    numpy.ndarray
        float64 array ``total * step - num_clients * clip_range``, within
        :func:`error_bound` of the sum of the clipped values.

    Raises
    ------
    TypeError
        When ``total`` is not ``uint32``.
    ValueError
        When the sum of ``num_clients`` encodings could have wrapped around the ring.
    """
    total = np.asarray(total)
    if total.dtype != np.uint32:
        raise TypeError(f"total must be a uint32 array (a sum in Z_2^32), got dtype {total.dtype}")
    n = _positive_int(num_clients, "num_clients")
    if n * (_levels(levels) - 1) >= RING_MODULUS:
        raise ValueError(
            f"{n} clients with {levels} levels can wrap around the 2^{RING_BITS} ring; use at most levels_for({n}) = {levels_for(n)} levels"
        )
    step = quantization_step(clip_range=clip_range, levels=levels)
    return total.astype(np.float64) * step - n * float(clip_range)


HALF_RING = RING_MODULUS // 2


def encode_integers(values: np.ndarray) -> np.ndarray:
    """Integer-valued ``values`` reduced mod 2^32 (``uint32``), for an exact modular sum.

    The distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021) sums clients' integer vectors, noise
    included, in Z_M with M = 2^32: the server learns the sum mod M, which :func:`decode_integers` lifts to the
    centred representative in ``[-2^31, 2^31)``. A sum outside that range wraps around (its utility suffers);
    privacy does not depend on it, as the modular sum is a function of the integer sum.

    Raises
    ------
    ValueError
        When a value is not finite, not an integer, or not below 2^31 in magnitude.
    """
    x = _finite_real(values, "values")
    rounded = np.round(x)
    if not np.array_equal(rounded, x):
        first = int(np.flatnonzero(rounded != x)[0])
        raise ValueError(f"integer encoding needs integer values, got {x[first]!r} at flat index {first}")
    if x.size and float(np.max(np.abs(x))) >= HALF_RING:
        raise ValueError(f"integer values must lie in (-2^31, 2^31), got one of magnitude {float(np.max(np.abs(x))):.4g}")
    return (x.astype(np.int64) % RING_MODULUS).astype(np.uint32)


def decode_integers(total: np.ndarray) -> np.ndarray:
    """The centred lift of a ``uint32`` sum mod 2^32 into ``[-2^31, 2^31)``, as float64 (exact)."""
    total = np.asarray(total)
    if total.dtype != np.uint32:
        raise TypeError(f"total must be a uint32 array (a sum in Z_2^32), got dtype {total.dtype}")
    lifted = total.astype(np.int64)
    lifted[lifted >= HALF_RING] -= RING_MODULUS
    return lifted.astype(np.float64)


class NonFiniteValuesError(ValueError):
    """Values to encode hold NaN or infinite entries (no place in the ring)."""


def _finite_real(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if np.iscomplexobj(array):
        raise ValueError(f"{name} must be real, got dtype {array.dtype}")
    x = array.astype(np.float64, copy=False)
    nan = np.isnan(x)
    inf = np.isinf(x)
    if nan.any() or inf.any():
        first = int(np.flatnonzero(nan | inf)[0])
        raise NonFiniteValuesError(
            f"{name} contain {int(nan.sum())} NaN and {int(inf.sum())} infinite entries "
            f"(first at flat index {first}); secure aggregation can only encode finite values"
        )
    return x


def _positive_int(value: int, name: str) -> int:
    n = operator.index(value)
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    return n


def _levels(levels: int) -> int:
    n = operator.index(levels)
    if not 2 <= n <= RING_MODULUS:
        raise ValueError(f"levels must be between 2 and 2^{RING_BITS}, got {n}")
    return n


def _clip_range(clip_range: float) -> float:
    c = float(clip_range)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"clip_range must be positive and finite, got {clip_range}")
    return c
