"""The distributed discrete Gaussian mechanism (DDG): the numeric core for secure aggregation over Z_{2^32}.

Secure aggregation by pairwise masking (:mod:`secure_ffm.secagg.masking`) sums ``uint32``
vectors modulo ``2^32``. Continuous Gaussian noise shares followed by rounding and
wrap-around are not an analysed mechanism. Kairouz, Liu & Steinke, "The Distributed
Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021
(arXiv:2102.06387) give one that is; each round runs:

1. every contribution (a client's update for user-level DP, one example's gradient for
   sample-level DP), clipped to L2 norm ``c``, is scaled by ``1/γ`` and rounded onto the
   integers by *conditional randomized rounding* (:func:`conditional_randomized_rounding`):
   unbiased rounding repeated until the rounded vector's norm is at most
   :func:`rounded_norm_bound`, which is therefore a hard bound on the L2 sensitivity in
   integer units;
2. each client adds a share of discrete Gaussian noise ``N_Z(0, σ^2)^d``
   (:func:`sample_discrete_gaussian`, Canonne, Kamath & Steinke, "The Discrete Gaussian for
   Differential Privacy", NeurIPS 2020) and reduces its vector modulo ``2^32``;
3. secure aggregation reveals only the modular sum, which the server lifts to the centred
   representative and multiplies by ``γ``.

Privacy comes from the *integer* sum plus the sum of ``n`` independent discrete Gaussian
shares (:func:`ddg_rdp`); the modular reduction and the decoding are post-processing of it,
so wrap-around costs utility, never privacy. Rényi DP (Mironov, CSF 2017) is amplified by
Poisson subsampling with the bound of Zhu & Wang, ICML 2019 (:func:`subsampled_rdp`), composed
over steps and converted to ``(ε, δ)`` by Opacus'
:func:`~opacus.accountants.analysis.rdp.get_privacy_spent` (:func:`ddg_epsilon`).

The paper also flattens each vector with a randomized Hadamard transform before rounding, so
that few bits per coordinate suffice; in the 32-bit ring of secure-ffm's masking the
granularity can be fine enough for the worst case (secure_ffm.privacy.distributed chooses it),
so no rotation is applied. The engine's geometry, sharing and accounting live in
:mod:`secure_ffm.privacy.distributed` and the ``zcdp`` accountant of
:mod:`secure_ffm.privacy.accounting`.

The formulas were checked against the authors' reference implementation,
``google-research/federated``, folder ``distributed_dp`` (``accounting_utils.py``,
``compression_utils.py``, ``discrete_gaussian_utils.py``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from opacus.accountants.analysis.rdp import get_privacy_spent
from scipy import special

from secure_ffm.privacy.noise import NoiseStream

DDG_ORDERS: tuple[int, ...] = (*range(2, 129), 256)
"""Integer RDP orders used by :func:`ddg_epsilon` (those of Kairouz et al.'s reference accounting)."""

DEFAULT_BETA = math.exp(-0.5)
"""β of conditional randomized rounding used in Kairouz et al.'s experiments."""

MIN_SHARE_SIGMA = 0.5
"""Below this per-share standard deviation (integer units) :func:`ddg_rdp` reports infinite RDP.

Kairouz et al.'s Proposition 14 (the RDP bound of :func:`ddg_rdp`) assumes σ >= 1/2; we claim
nothing below it."""

_PROPOSAL_OVERSAMPLING = 1.5
_MIN_PROPOSALS = 64


# --------------------------------------------------------------------------- validation


def _real(value: object, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return value


def _count(value: object, name: str, *, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _sample_rate(value: object) -> float:
    q = _real(value, "sample_rate")
    if not 0 < q <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {value!r}")
    return q


# --------------------------------------------------------------------------- sampling


def _geometric(stream: NoiseStream, size: int, t: int) -> np.ndarray:
    """``size`` draws of the number of failures before a success with probability ``1 - exp(-1/t)``.

    Inversion: ``floor(-t·log(1 - U))``, which has ``P(G >= k) = exp(-k/t)``.
    """
    u = stream.random(size)
    return np.floor(-t * np.log1p(-u)).astype(np.int64)


def sample_discrete_gaussian(size: int, *, sigma: float, stream: NoiseStream) -> np.ndarray:
    """``size`` independent draws from the discrete Gaussian ``N_Z(0, sigma^2)``.

    ``N_Z(0, σ^2)`` gives each integer ``y`` probability proportional to
    ``exp(-y^2 / (2σ^2))`` (Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
    Privacy", NeurIPS 2020, Definition 1). The sampler follows their Algorithm 3: propose
    ``Y`` from the discrete Laplace distribution with scale ``t = floor(σ) + 1``
    (``P(Y = y) ∝ exp(-|y|/t)``), accept it with probability
    ``exp(-(|Y| - σ^2/t)^2 / (2σ^2))``, and repeat until accepted. It is vectorised: a batch
    of proposals is drawn at once and the loop only redraws for the outputs still missing.
    Every uniform comes from ``stream.random``.

    Where floating point replaces CKS20's exact rational arithmetic:

    - the discrete Laplace proposal is the difference of two geometric variables, each
      obtained by inversion ``floor(-t·log(1 - U))`` of a float64 uniform ``U`` (CKS20 build
      it from exact Bernoulli(exp(-γ)) trials, their Algorithms 1 and 2). Uniforms are
      multiples of ``2^-53``, so each geometric is at most ``53·ln(2)·t ≈ 36.7·t`` and its
      probabilities are off by about ``2^-53`` relative: the target's mass beyond ``36σ``
      is below ``exp(-600)``;
    - the acceptance test compares a float64 uniform with ``exp(·)`` computed in float64
      (CKS20: an exact Bernoulli(exp(-γ)) for rational γ), an error of order ``2^-52`` in the
      acceptance probability.

    The output is an integer, so the attacks on the low-order bits of floating-point noise
    (Mironov, CCS 2012) have nothing to read; the residual error is a relative change of
    order ``1e-15`` in the probabilities, far below any δ used in practice.

    Parameters
    ----------
    size
        Number of draws.
    sigma
        The scale σ >= 0 (the variance is slightly below σ^2 for small σ and ≈ σ^2 for σ >= 1).
        ``sigma = 0`` returns zeros (the point mass at 0).
    stream
        The party's secret noise stream (:class:`~secure_ffm.privacy.noise.NoiseStream`).

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(size,)``.
    """
    size = _count(size, "size", minimum=0)
    sigma = _real(sigma, "sigma", nonnegative=True)
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out
    t = math.floor(sigma) + 1
    sigma_sq = sigma * sigma
    shift = sigma_sq / t
    filled = 0
    while filled < size:
        missing = size - filled
        draws = max(_MIN_PROPOSALS, math.ceil(_PROPOSAL_OVERSAMPLING * missing / _acceptance_rate_guess(sigma)))
        y = _geometric(stream, draws, t) - _geometric(stream, draws, t)
        accept = stream.random(draws) < np.exp(-np.square(np.abs(y) - shift) / (2.0 * sigma_sq))
        accepted = y[accept][:missing]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
    return out


def _acceptance_rate_guess(sigma: float) -> float:
    """A rough lower estimate of Algorithm 3's acceptance rate (only sizes the batches)."""
    return 0.3 if sigma < 1 else 0.5


# --------------------------------------------------------------------------- rounding


def rounded_norm_bound(*, norm: float, granularity: float, dim: int, beta: float) -> float:
    """The L2 norm bound, in integer units, after conditional randomized rounding onto ``granularity·Z^dim``.

    A vector of norm at most ``norm`` becomes ``x / γ`` of norm at most ``a = norm/γ``;
    randomized rounding moves each of ``d`` coordinates by less than 1, so the rounded
    vector has norm below ``a + sqrt(d)`` always. Conditioning on the event that the norm is
    at most ``sqrt(a^2 + d/4 + sqrt(2 ln(1/β))·(a + sqrt(d)/2))``, which unconditioned
    randomized rounding meets with probability at least ``1 - β`` (Kairouz et al. 2021,
    conditional randomized rounding, sec. 4.1 and its appendix; ``rounded_l2_norm_bound`` in
    the reference implementation), gives the smaller of the two. ``beta = 0`` means no
    conditioning and returns ``a + sqrt(d)``.

    Parameters
    ----------
    norm
        L2 bound of the real vector (real units), > 0.
    granularity
        γ > 0, the real value of one integer unit.
    dim
        Number of coordinates rounded.
    beta
        In ``[0, 1)``.
    """
    a = _real(norm, "norm", positive=True) / _real(granularity, "granularity", positive=True)
    dim = _count(dim, "dim")
    beta = _real(beta, "beta")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must lie in [0, 1), got {beta!r}")
    plain = a + math.sqrt(dim)
    if beta == 0:
        return plain
    conditioned = math.sqrt(a * a + 0.25 * dim + math.sqrt(2.0 * math.log(1.0 / beta)) * (a + 0.5 * math.sqrt(dim)))
    return min(plain, conditioned)


FIXED_POINT_MAX = 2.0**19
"""Rows whose coordinates all lie strictly within ``±FIXED_POINT_MAX`` (integer units) are split into integer and
fraction in fixed point (:func:`_split_rows`); the exact integer norm of a candidate then fits int64 for rows of fewer
than :data:`FIXED_POINT_MAX_WIDTH` coordinates. Sample-level distributed DP-SGD's coordinates stay below ``2^16``."""
FIXED_POINT_MAX_WIDTH = 2**24


def _split_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each coordinate's integer part below it and its fraction as a 32-bit threshold (``P(up) = threshold / 2^32``).

    Fixed point where :data:`FIXED_POINT_MAX` allows: ``v 2^32`` truncated to int64 has 32 fractional bits, so the
    integer below is an arithmetic shift and the fraction its low 32 bits (int64 results; 110 against 165 µs for a
    26k-coordinate row, the float64 split's floor, subtraction and the final int64 conversion being the difference).
    Otherwise float64: ``floor(v)`` and ``floor((v - floor(v)) 2^32)``. Either way the fraction is quantized to
    ``2^-32``."""
    if rows.shape[1] < FIXED_POINT_MAX_WIDTH and np.abs(rows).max(initial=0.0) < FIXED_POINT_MAX:
        fixed = np.multiply(rows, 2.0**32).astype(np.int64)
        return fixed >> 32, fixed.astype(np.uint32)  # (the cast keeps the low 32 bits: two's complement, so v - floor v)
    base = np.floor(rows)
    frac = rows - base
    if (whole := frac >= 1.0).any():  # v - floor(v) rounds to 1.0 for a tiny negative v: v is 0 to float precision
        base[whole] += 1.0
        frac[whole] = 0.0
    frac *= 2.0**32
    return base, frac.astype(np.uint32)


def _round_pending(
    base: np.ndarray, threshold: np.ndarray, limit: float, stream: NoiseStream, max_tries: int, out: np.ndarray
) -> np.ndarray:
    """Round every row of ``base`` + coins into ``out`` until its squared norm is at most ``limit``; the rows still
    over it after ``max_tries`` draws."""
    count, width = base.shape
    pending = np.arange(count)
    for _ in range(max_tries):
        if pending.size == 0:
            break
        every = pending.size == count  # (no copies of the rows that are still pending while all are)
        words = stream.uniform_words32(pending.size * width).reshape(pending.size, width)
        candidate = (base if every else base[pending]) + (words < (threshold if every else threshold[pending]))
        ok = np.einsum("ij,ij->i", candidate, candidate) <= limit  # exact in int64 on the fixed-point path
        out[pending[ok]] = candidate[ok]
        pending = pending[~ok]
    return pending


def conditional_randomized_rounding(x: np.ndarray, *, norm_bound: float, stream: NoiseStream, max_tries: int = 1000) -> np.ndarray:
    """Unbiased randomized rounding to integers, redrawn until the rounded norm is at most ``norm_bound``.

    Each coordinate ``v`` becomes ``floor(v) + 1`` with probability ``v - floor(v)`` and
    ``floor(v)`` otherwise, so it is unbiased before conditioning; a row whose rounded L2 norm
    exceeds ``norm_bound`` is redrawn as a whole (Kairouz et al. 2021, sec. 4.1). The bound is
    therefore guaranteed for every returned row, which is what makes it the sensitivity;
    conditioning biases the result slightly (less the looser the bound is).

    The coin of a coordinate is a uniform 32-bit word from ``stream.uniform_words32`` compared with its
    fraction scaled to ``2^32`` (:func:`_split_rows`): the probability is the fraction quantized to a
    multiple of ``2^-32`` (a bias below ``2.4e-10`` per coordinate; float64 uniforms, used until
    2026-12-06, quantized it to ``2^-53``). Neither the bound nor the privacy analysis depends on these
    probabilities: the conditioning alone bounds the sensitivity. A 26k-coordinate row (the ``tanh-cnn``)
    took 110 µs this way against 165 µs with the float64 split and 240 µs with the secure stream's float64
    uniforms (one thread, rows read from a 51-row batch, 2026-12-06).

    Parameters
    ----------
    x
        Real values already in integer units (divided by γ): one vector (1-D) or one vector per
        row (2-D), rows rounded independently.
    norm_bound
        The L2 bound each rounded row must meet (e.g. :func:`rounded_norm_bound`).
    stream
        The party's secret noise stream; every coin comes from ``stream.uniform_words32``.
    max_tries
        Draws per row before giving up.

    Returns
    -------
    numpy.ndarray
        int64 array of the shape of ``x``.

    Raises
    ------
    ValueError
        When a row still exceeds the bound after ``max_tries`` draws (its norm was too large
        for ``norm_bound``; clip it or loosen the bound), or on malformed input.
    """
    x = np.asarray(x, dtype=np.float64)
    bound = _real(norm_bound, "norm_bound", nonnegative=True)
    max_tries = _count(max_tries, "max_tries")
    if x.ndim not in (1, 2) or not np.all(np.isfinite(x)):
        raise ValueError(f"conditional_randomized_rounding takes a finite 1-D vector or 2-D rows, got shape {x.shape}")
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    base, threshold = _split_rows(rows)
    count, width = rows.shape
    limit = bound * bound
    out = np.empty(rows.shape, dtype=np.int64)
    if count == 1:  # one row (a client's rounding goes one example at a time): no indexing of pending rows
        base, threshold = base.reshape(-1), threshold.reshape(-1)
        for _ in range(max_tries):
            candidate = base + (stream.uniform_words32(width) < threshold)
            if np.dot(candidate, candidate) <= limit:  # exact in int64 on the fixed-point path
                return candidate.astype(np.int64, copy=False).reshape(x.shape)
        pending = np.zeros(1, dtype=np.int64)
    else:
        pending = _round_pending(base, threshold, limit, stream, max_tries, out)
    if pending.size:
        norms = np.linalg.norm(rows[pending], axis=1)
        raise ValueError(
            f"conditional randomized rounding failed for {pending.size} row(s) after {max_tries} tries: "
            f"unrounded norm(s) up to {norms.max():.6g} against the bound {bound:.6g}; clip the rows or loosen the bound"
        )
    return out.reshape(x.shape)


# --------------------------------------------------------------------------- accounting


def _tau(sigma: float, num_clients: int) -> float:
    k = np.arange(1, num_clients, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))


def ddg_rdp(
    orders: Sequence[float] | np.ndarray,
    *,
    sigma: float,
    num_clients: int,
    l2_sensitivity: float,
    dim: int,
    l1_sensitivity: float | None = None,
) -> np.ndarray:
    """Rényi DP of the distributed discrete Gaussian mechanism (one release, no subsampling).

    The mechanism releases ``x + Σ_{i=1}^{n} X_i`` with ``X_i ~ N_Z(0, σ^2)^d`` independent and
    ``x`` an integer vector whose neighbouring values differ by at most ``Δ2`` in L2 (and ``Δ1``
    in L1) norm. With ``τ = 10·Σ_{k=1}^{n-1} exp(-2π^2 σ^2 k/(k+1))`` and ``s = sqrt(n)·σ``,
    Kairouz, Liu & Steinke 2021 (Theorem 1 for the concentrated-DP form; Proposition 14,
    eq. 17 of arXiv:2102.06387 for the RDP form, as used by their reference
    ``accounting_utils.compute_rdp_dgaussian``) give, at order α > 1::

        min( α Δ2^2/(2 s^2) + τ d,
             α/2 · (Δ2^2/s^2 + 2 τ Δ1/s + τ^2 d),
             α/2 · (Δ2/s + τ sqrt(d))^2 )

    τ measures how far the sum of ``n`` discrete Gaussians is from a discrete Gaussian
    ``N_Z(0, nσ^2)``; as τ -> 0 the bound becomes the Gaussian mechanism's ``α Δ2^2/(2 n σ^2)``.
    When ``l1_sensitivity`` is None, ``Δ1 = Δ2·min(sqrt(d), Δ2)`` is used: ``sqrt(d)·Δ2`` holds
    for any vector and ``Δ2^2`` for integer vectors (each non-zero coordinate has ``|v| <= v^2``).

    Parameters
    ----------
    orders
        RDP orders α > 1.
    sigma
        Standard deviation parameter σ of each share, integer units. Below ``MIN_SHARE_SIGMA``
        (1/2) no bound is claimed and the result is infinite (in particular for σ = 0).
    num_clients
        n, the number of independent shares in the sum (the fewest that can arrive).
    l2_sensitivity, l1_sensitivity
        Δ2 and Δ1 of the integer vector, integer units.
    dim
        d, the length of the vector.

    Returns
    -------
    numpy.ndarray
        float64 RDP values, one per order (``inf`` where no bound holds).
    """
    alphas = np.asarray(orders, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(alphas > 1) or not np.all(np.isfinite(alphas)):
        raise ValueError(f"orders must be a non-empty 1-D sequence of finite values > 1, got {orders!r}")
    sigma = _real(sigma, "sigma", nonnegative=True)
    n = _count(num_clients, "num_clients")
    l2 = _real(l2_sensitivity, "l2_sensitivity", nonnegative=True)
    d = _count(dim, "dim")
    l1 = l2 * min(math.sqrt(d), l2) if l1_sensitivity is None else _real(l1_sensitivity, "l1_sensitivity", nonnegative=True)
    if sigma < MIN_SHARE_SIGMA:
        return np.full(alphas.shape, math.inf)
    tau = _tau(sigma, n)
    s = math.sqrt(n) * sigma
    term_1 = alphas * l2**2 / (2 * s**2) + tau * d
    term_2 = alphas / 2 * (l2**2 / s**2 + 2 * tau * l1 / s + tau**2 * d)
    term_3 = alphas / 2 * (l2 / s + tau * math.sqrt(d)) ** 2
    return np.minimum(np.minimum(term_1, term_2), term_3)


def subsampled_rdp(
    orders: Sequence[int] | np.ndarray,
    rdp: np.ndarray | Sequence[float] | Callable[[np.ndarray], np.ndarray],
    *,
    sample_rate: float,
) -> np.ndarray:
    """RDP of a mechanism run on a Poisson subsample, by the general upper bound of Zhu & Wang, ICML 2019.

    "Poisson Subsampled Rényi Differential Privacy" (Zhu & Wang, ICML 2019, Theorem 5, the
    upper bound that holds for any mechanism with RDP ``ε(·)``; ``_compute_rdp_subsampled``
    with ``upper_bound=True`` in Kairouz et al.'s reference code): for an integer order
    ``α >= 2`` and sample rate ``q``::

        ε'(α) <= 1/(α-1) · log( (1-q)^(α-1) (1 + (α-1) q)
                               + C(α,2) q^2 (1-q)^(α-2) e^{ε(2)}
                               + 3 Σ_{l=3}^{α} C(α,l) q^l (1-q)^(α-l) e^{(l-1) ε(l)} )

    The result is also capped by ``ε(α)`` itself (subsampling never hurts). ``q = 1`` returns
    ``rdp`` unchanged.

    Parameters
    ----------
    orders
        Integer orders α >= 2.
    rdp
        The unsampled mechanism's RDP: a callable mapping an int array of orders to their RDP
        values, or an array aligned with ``orders`` (which must then contain every integer from
        2 to its largest order, as the bound at α needs ``ε(l)`` for all ``2 <= l <= α``).
    sample_rate
        q in (0, 1].

    Returns
    -------
    numpy.ndarray
        float64 RDP values, one per order.
    """
    alphas = np.asarray(orders)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.mod(alphas, 1) == 0) or not np.all(alphas >= 2):
        raise ValueError(f"subsampled_rdp needs a non-empty 1-D sequence of integer orders >= 2, got {orders!r}")
    alphas = alphas.astype(np.int64)
    q = _sample_rate(sample_rate)
    if callable(rdp):
        eps_at = rdp
    else:
        values = np.asarray(rdp, dtype=np.float64)
        if values.shape != alphas.shape:
            raise ValueError(f"rdp has shape {values.shape}, orders {alphas.shape}")
        table = dict(zip(alphas.tolist(), values.tolist(), strict=True))
        missing = sorted(set(range(2, int(alphas.max()) + 1)) - table.keys())
        if q < 1 and missing:
            raise ValueError(f"subsampled_rdp with an array needs every integer order from 2 to {alphas.max()}; missing {missing[:5]}...")

        def eps_at(ls: np.ndarray) -> np.ndarray:
            return np.array([table[int(order)] for order in ls], dtype=np.float64)

    if q == 1:
        return np.asarray(eps_at(alphas), dtype=np.float64)
    top = int(alphas.max())
    ls = np.arange(2, top + 1)
    eps = np.asarray(eps_at(ls), dtype=np.float64)  # eps[l - 2] = ε(l)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    result = np.empty(alphas.shape, dtype=np.float64)
    for i, alpha in enumerate(alphas.tolist()):
        terms = [(alpha - 1) * log_1mq + math.log1p((alpha - 1) * q)]
        weights = [1.0]
        terms.append(_log_comb(alpha, 2) + 2 * log_q + (alpha - 2) * log_1mq + eps[0])
        weights.append(1.0)
        if alpha >= 3:
            ks = np.arange(3, alpha + 1)
            log_terms = _log_comb(alpha, ks) + ks * log_q + (alpha - ks) * log_1mq + (ks - 1) * eps[ks - 2]
            terms.extend(log_terms.tolist())
            weights.extend([3.0] * log_terms.size)
        with np.errstate(over="ignore"):
            bound = float(special.logsumexp(terms, b=weights)) / (alpha - 1)
        result[i] = min(bound, eps[alpha - 2])
    return result


def _log_comb(n: int, k: int | np.ndarray) -> float | np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def ddg_epsilon(
    *,
    sigma: float,
    num_clients: int,
    l2_sensitivity: float,
    dim: int,
    steps: int,
    sample_rate: float,
    delta: float,
    l1_sensitivity: float | None = None,
) -> float:
    """ε at ``delta`` after ``steps`` Poisson-subsampled rounds of the distributed discrete Gaussian.

    Per-round RDP from :func:`ddg_rdp`, amplified by :func:`subsampled_rdp`, multiplied by
    ``steps`` (RDP composition, Mironov 2017) at the orders :data:`DDG_ORDERS`, and converted to
    ``(ε, δ)`` by Opacus' ``get_privacy_spent`` (Balle et al., AISTATS 2020, Thm. 21), the
    conversion :mod:`secure_ffm.privacy.accounting`'s ``rdp`` accountant uses. Arguments as in
    :func:`ddg_rdp` (integer units); ``sample_rate`` is the probability that a protected unit
    takes part in a round. Returns ``inf`` when no bound holds (σ < 1/2).
    """
    steps = _count(steps, "steps")
    q = _sample_rate(sample_rate)
    delta = _real(delta, "delta")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie strictly between 0 and 1, got {delta!r}")

    def per_round(orders: np.ndarray) -> np.ndarray:
        return ddg_rdp(orders, sigma=sigma, num_clients=num_clients, l2_sensitivity=l2_sensitivity, dim=dim, l1_sensitivity=l1_sensitivity)

    orders = np.asarray(DDG_ORDERS)
    rdp = subsampled_rdp(orders, per_round, sample_rate=q) * steps
    if not np.any(np.isfinite(rdp)):
        return math.inf
    with warnings.catch_warnings():  # Opacus warns when the best order is at an end of the range; ε is still valid
        warnings.simplefilter("ignore", UserWarning)
        epsilon, _ = get_privacy_spent(orders=orders.astype(float), rdp=rdp, delta=delta)
    return float(epsilon)
