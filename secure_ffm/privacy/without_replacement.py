"""RDP of a mechanism run on a fixed-size sample drawn without replacement (replace-one neighbours).

DP-FedAvg rounds whose clients are sampled as exactly ``m`` of ``n`` (``client_sampling = "fixed"``, the only choice
with the clients' noise shares) are not the Poisson-subsampled Gaussian the ledger composes: the ledger's ε is then the
approximation McMahan et al. (ICLR 2018) and TensorFlow Federated make. The bound that holds for them is Wang, Balle &
Kasiviswanathan, "Subsampled Rényi Differential Privacy and Analytical Moments Accountant", AISTATS 2019, Theorem 9:
for integer α >= 2, with γ = m / n and the base mechanism's RDP ε(·) under replace-one neighbours,

    ε'(α) <= 1/(α-1) log(1 + γ² C(α,2) min{4 (e^{ε(2)} - 1), 2 e^{ε(2)}} + Σ_{j=3..α} 2 γ^j C(α,j) e^{(j-1) ε(j)})

(the theorem's ``min{2, (e^{ε(∞)} - 1)^j}`` is 2 for a Gaussian, whose ε(∞) is infinite). The base mechanism is the
Gaussian sum of clipped updates: replacing one client's update by another's moves the sum by up to 2C, so with noise
z C its RDP is ε(j) = j (2C)² / (2 z² C²) = 2 j / z². Discrete Gaussian shares (masking) are accounted as ρ-zCDP with
ρ = 1 / (2 z²) at sensitivity C (:mod:`secure_ffm.privacy.discrete_gaussian`); their Rényi bound grows at most 4x
when the sensitivity doubles, so the same ε(j) = 2 j / z² bounds them.

Rounds compose by adding RDP; (ε, δ) follows from Balle et al., AISTATS 2020, Thm. 21 (Opacus' conversion), over
integer orders only (the theorem holds for integers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln, logsumexp

ORDERS: tuple[int, ...] = tuple(range(2, 257))
"""Integer Rényi orders 2..256 (Theorem 9 holds for integer orders)."""


def _log_binomial(alpha: int, j: np.ndarray) -> np.ndarray:
    return gammaln(alpha + 1) - gammaln(j + 1) - gammaln(alpha - j + 1)


def subsampled_rdp(base_rdp: np.ndarray, *, sample_rate: float, orders: Sequence[int] = ORDERS) -> np.ndarray:
    """Theorem 9's bound at each of ``orders`` for a base mechanism whose replace-one RDP at order ``j`` is
    ``base_rdp[j]`` (an array indexed by the order, entries 0 and 1 unused, covering up to ``max(orders)``).

    ``sample_rate`` is γ = m / n; at γ = 1 the base mechanism runs on the whole dataset and its own RDP is returned."""
    gamma = float(sample_rate)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
    eps = np.asarray(base_rdp, dtype=np.float64)
    if gamma == 1.0:
        return np.array([eps[a] for a in orders])
    log_gamma = math.log(gamma)
    eps2 = eps[2]
    log_expm1_eps2 = eps2 + math.log(-math.expm1(-eps2)) if eps2 > 0 else -math.inf
    second = min(math.log(4.0) + log_expm1_eps2, math.log(2.0) + eps2)
    out = np.empty(len(orders))
    for k, alpha in enumerate(orders):
        alpha = int(alpha)
        if alpha < 2:
            raise ValueError(f"orders must be integers >= 2, got {alpha}")
        j = np.arange(3, alpha + 1, dtype=np.float64)
        higher = math.log(2.0) + j * log_gamma + _log_binomial(alpha, j) + (j - 1.0) * eps[3 : alpha + 1]
        terms = np.concatenate(([0.0, 2.0 * log_gamma + float(_log_binomial(alpha, np.asarray(2.0))) + second], higher))
        out[k] = float(logsumexp(terms)) / (alpha - 1)
    return np.minimum(out, np.array([eps[a] for a in orders]))  # subsampling never costs more than the full mechanism


def gaussian_replace_one_rdp(noise_multiplier: float, max_order: int) -> np.ndarray:
    """ε(j) = 2 j / z² for j = 0..max_order: the Gaussian sum of updates clipped to C, noise z C, replace-one (2C)."""
    z = float(noise_multiplier)
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"noise_multiplier must be positive, got {noise_multiplier!r}")
    return 2.0 * np.arange(max_order + 1, dtype=np.float64) / (z * z)


def fixed_size_epsilon(*, entries: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` of ``entries`` ``(z, γ, rounds)``: each round the Gaussian sum over exactly ``γ n`` clients sampled
    without replacement, against replace-one neighbours (a bound: Theorem 9 composed, then Balle et al.'s conversion)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    total = np.zeros(len(ORDERS))
    for noise_multiplier, sample_rate, rounds in entries:
        if rounds > 0:
            total += rounds * subsampled_rdp(gaussian_replace_one_rdp(noise_multiplier, max(ORDERS)), sample_rate=sample_rate)
    if not total.any():
        return 0.0
    epsilon, _ = get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(epsilon)


__all__ = ["ORDERS", "fixed_size_epsilon", "gaussian_replace_one_rdp", "subsampled_rdp"]
