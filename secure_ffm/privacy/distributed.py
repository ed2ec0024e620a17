"""Distributed discrete Gaussian noise for sums that pairwise masking aggregates exactly.

With ``privacy.noise_placement = "clients"`` every client adds a share of the noise so that the server, which
sees only the masked sum (secure_ffm.secagg.masking_protocol), never holds a value with less than the full noise.
Masking works in the ring Z_2^32, so real updates must become integers. Continuous Gaussian shares followed by
rounding and modular wrap-around are not the mechanism any analysis covers; the distributed discrete Gaussian
(Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021) is. Each protected contribution x (a client's clipped update for user-level DP, one
example's clipped gradient for sample-level DP) of L2 norm at most c is

1. scaled to integer units, x / γ, with a public granularity γ;
2. rounded by *conditional randomized rounding*: unbiased stochastic rounding, repeated until the rounded vector's
   norm is at most Δ2 = :func:`~secure_ffm.privacy.discrete_gaussian.rounded_norm_bound` (so one contribution moves
   the integer sum by at most Δ2, whatever the rounding drew);
3. summed with the client's other contributions, and the client adds one share N_Z(0, σ²)^d of discrete Gaussian
   noise drawn from its secret;
4. reduced mod 2^32 and masked; the server unmasks the sum of the survivors' vectors, lifts it to
   [-2^31, 2^31) and multiplies by γ.

Privacy. With at least t shares in the sum (t: the masking threshold, below which a round aborts), the sum is
ρ-zCDP with ρ = ε²/2, ε from the paper's Theorem (Kairouz et al. 2021, the τ-term bound computed by
:func:`~secure_ffm.privacy.discrete_gaussian.ddg_rdp`); more shares only add independent noise. σ is chosen so
that ρ ≤ 1 / (2 z²) for the run's noise multiplier z, and the ledger accounts each step with
:class:`~secure_ffm.privacy.accounting.SubsampledZCDPAccountant` (``accountant = "zcdp"``): RDP α / (2 z²),
Poisson subsampling by Zhu & Wang's general bound. Wrap-around is a function of the integer sum, so it can cost
utility but never privacy.

Granularity. No flattening (random rotation) is needed in a 32-bit ring: γ is chosen so that even the worst case
(every contribution at norm c in the same coordinate, each rounding adding 1) plus ``k_stddevs`` standard
deviations of the full noise stays inside [-2^31, 2^31). The rounding then inflates Δ2 over c / γ by a factor
:attr:`DiscreteGaussianSum.rounding_inflation` of 1 + O(γ² d / c²), which the noise covers.

Trust. As with any distributed noise, each client must believe that at least t shares reach the sum; a server that
colludes with clients who add no noise lowers it (docs/threat_model.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_ffm.engine.aggregation import Aggregate, AggregateStep, EncodingDeclined, VectorLayout
from secure_ffm.engine.transforms import TransformContext, UpdateTransform
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.privacy.noise import DISCRETE_SHARE, NoiseStream
from secure_ffm.secagg.quantization import HALF_RING  # integer sums stay in [-2^31, 2^31): Z_2^32, centred

BETA = math.exp(-0.5)
"""Conditional rounding's β (Kairouz et al. 2021 use e^-0.5): larger Δ2, fewer retries."""


@dataclass(frozen=True)
class DiscreteGaussianSum:
    """One run's geometry of distributed discrete Gaussian noise; all derived values are public.

    Parameters
    ----------
    clip_norm
        c: the L2 bound of one protected contribution (real units).
    noise_multiplier
        z: the Gaussian-equivalent noise multiplier the ledger records (``accountant = "zcdp"``); the shares are
        sized so that the sum of any ``min_shares`` of them is (1 / (2 z²))-zCDP for one contribution.
    min_shares
        t: the fewest shares a completed round's sum holds (the masking threshold).
    max_shares
        The most shares a sum holds (the round's participants): bounds the noise's magnitude for wrap-around.
    contributions
        The most contributions of norm at most c in one sum (clients for user-level DP; examples for sample-level).
    dim
        d: the number of coordinates.
    """

    clip_norm: float
    noise_multiplier: float
    min_shares: int
    max_shares: int
    contributions: int
    dim: int
    beta: float = BETA
    k_stddevs: float = 6.0
    granularity: float = field(init=False)
    """γ: the real value of one integer unit."""
    l2_sensitivity: float = field(init=False)
    """Δ2 in integer units: the norm bound after conditional randomized rounding."""
    share_sigma: float = field(init=False)
    """σ of each client's share N_Z(0, σ²) in integer units."""

    def __post_init__(self) -> None:
        from secure_ffm.privacy.discrete_gaussian import rounded_norm_bound

        c, z, t, m = self.clip_norm, self.noise_multiplier, self.min_shares, self.max_shares
        if not (math.isfinite(c) and c > 0) or not (math.isfinite(z) and z > 0):
            raise ValueError(f"clip_norm and noise_multiplier must be positive and finite, got {c} and {z}")
        if not 1 <= t <= m or self.contributions < 1 or self.dim < 1:
            raise ValueError(f"need 1 <= min_shares <= max_shares and positive contributions and dim, got {self}")
        # worst case: n contributions of size c/γ + 1 each (rounding) plus k σ_total; σ_total ≈ z (c/γ + √d) √(m/t)
        spread = self.k_stddevs * z * math.sqrt(m / t)
        room = HALF_RING - self.contributions - spread * math.sqrt(self.dim) - 2
        if room <= HALF_RING / 4:
            raise ValueError(f"{self.contributions} contributions of dimension {self.dim} leave no room in a 32-bit ring")
        gamma = (self.contributions + spread) * c * 1.001 / room
        for _ in range(60):
            delta2 = rounded_norm_bound(norm=c, granularity=gamma, dim=self.dim, beta=self.beta)
            sigma = _share_sigma(z, t, delta2, self.dim)
            if self.contributions * (c / gamma + 1) + self.k_stddevs * sigma * math.sqrt(m) < HALF_RING:
                break
            gamma *= 1.05
        else:  # pragma: no cover - the first γ already leaves room by construction
            raise ValueError("no granularity fits the ring")
        object.__setattr__(self, "granularity", gamma)
        object.__setattr__(self, "l2_sensitivity", delta2)
        object.__setattr__(self, "share_sigma", sigma)

    @property
    def rounding_inflation(self) -> float:
        """Δ2 γ / c: how much rounding enlarges one contribution's norm bound (at least 1)."""
        return self.l2_sensitivity * self.granularity / self.clip_norm

    def integers(self, contributions: np.ndarray, *, stream: NoiseStream) -> np.ndarray:
        """The sum of the rounded contributions (one per row of a 2-D array, or one 1-D vector), in integer units."""
        from secure_ffm.privacy.discrete_gaussian import conditional_randomized_rounding

        rows = np.atleast_2d(np.asarray(contributions, dtype=np.float64))
        if not np.isfinite(rows).all():  # diverged training: no integer stands for it, and the round goes on without it
            raise EncodingDeclined("the update has NaN or infinite values (local training diverged); the client sends nothing this round")
        total = np.zeros(rows.shape[1], dtype=np.int64)
        for row in rows:  # one row at a time: no batch-sized temporaries, and faster (cache-sized arrays)
            total += conditional_randomized_rounding(row / self.granularity, norm_bound=self.l2_sensitivity, stream=stream)
        return total.astype(np.float64)

    def share(self, size: int, *, stream: NoiseStream) -> np.ndarray:
        """One client's noise share N_Z(0, σ²)^size (float64 holding integers)."""
        from secure_ffm.privacy.discrete_gaussian import sample_discrete_gaussian

        return sample_discrete_gaussian(size, sigma=self.share_sigma, stream=stream).astype(np.float64)

    def describe(self) -> dict[str, Any]:
        """The public parameters, for ``privacy.json``."""
        return {
            "mechanism": "distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021)",
            "ring_bits": 32,
            "granularity": self.granularity,
            "l2_sensitivity_integer": self.l2_sensitivity,
            "rounding_inflation": self.rounding_inflation,
            "share_sigma_integer": self.share_sigma,
            "min_shares": self.min_shares,
            "max_shares": self.max_shares,
            "beta": self.beta,
            "dim": self.dim,
        }


def _share_sigma(z: float, t: int, delta2: float, dim: int) -> float:
    """The smallest σ (to 1e-6 relative) whose sum of t shares is (1 / (2 z²))-zCDP for integer sensitivity Δ2."""
    from secure_ffm.privacy.discrete_gaussian import ddg_rdp

    target = 1.0 / (2.0 * z * z)  # ρ at order α: RDP(α) = α ρ

    def rho(sigma: float) -> float:
        return float(ddg_rdp([2.0], sigma=sigma, num_clients=t, l2_sensitivity=delta2, dim=dim)[0]) / 2.0

    sigma = z * delta2 / math.sqrt(t)  # exact when the τ term vanishes
    for _ in range(10_000):
        current = rho(sigma)
        if current <= target:
            return sigma
        sigma *= 1.0 + 1e-6 if current < target * (1 + 1e-4) else 1.01
    raise ValueError(f"no share σ reaches z = {z} for t = {t} shares")  # pragma: no cover


def minimum_shares(config: Any) -> int:
    """How many noise shares a sum the server can learn holds at least: the number each share is sized for.

    The configured protocol's :meth:`~secure_ffm.engine.aggregation.AggregationProtocol.smallest_sum`: under masking
    the sum a server that lies about survivors can isolate (about 2/3 of the round by default), under CKKS the fewest
    contributions its key holder decrypts (``secure_aggregation.threshold``, by default every planned participant)."""
    from secure_ffm.variants import PROTOCOLS

    return PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").smallest_sum(config)


class DiscreteGaussianShare(UpdateTransform):
    """User-level distributed DP under masking: round the clipped update to integers and add this client's share.

    ``source.discrete_geometry(dim)`` is the mechanism's public geometry for updates of ``dim`` coordinates.
    """

    name = "discrete-gaussian-share"

    def __init__(self, source: Any) -> None:
        self.source = source

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        if context.randomness is None:
            raise ValueError("discrete-gaussian-share needs the client's private randomness: its noise must be secret")
        if update.statistics:
            raise ValueError("discrete Gaussian shares cover the update only; statistics would travel without their noise")
        layout = VectorLayout.of_arrays(update.delta)
        flat = layout.flatten(update, 1.0)
        geometry: DiscreteGaussianSum = self.source.discrete_geometry(flat.size)
        # the client's own bound, whatever clip norm the server's instructions named
        norm = float(np.linalg.norm(flat))
        if norm > geometry.clip_norm:
            flat *= geometry.clip_norm / norm
        stream = context.randomness.stream(DISCRETE_SHARE, context.round)
        noised = geometry.integers(flat, stream=stream) + geometry.share(flat.size, stream=stream)
        return ClientUpdate(update.client_id, update.round, layout.split(noised)[0], update.num_examples, dict(update.metrics))


class ScaleDiscreteSum(AggregateStep):
    """Server-side: the unmasked mean of integer vectors back to real units (× γ)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __call__(self, round: int, aggregate: Aggregate) -> Aggregate:
        gamma = self.source.discrete_geometry(sum(np.size(v) for v in aggregate.mean_delta.values())).granularity
        mean = {
            name: (np.asarray(value, dtype=np.float64) * gamma).astype(np.asarray(value).dtype)
            for name, value in aggregate.mean_delta.items()
        }
        return aggregate.replace(mean_delta=mean)
