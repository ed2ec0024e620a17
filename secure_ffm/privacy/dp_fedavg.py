"""User-level DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018), with optional adaptive clipping (Andrew et al.,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021).

Each sampled client clips its whole update to L2 norm C (a client-side update
transform); the clients are weighted uniformly, so one client moves the sum by at
most C; Gaussian noise N(0, (zC)^2) is added to the sum, either by the server
(``noise_placement = "server"``) or as m shares N(0, (zC)^2 / m) by the m clients
before they send (``"clients"``: distributed DP, meant to run under secure
aggregation so that the server only ever sees a noised sum). Each round is one
subsampled Gaussian mechanism with q = clients_per_round / num_clients: with the
server's noise the rounds are Poisson samples and the sum is divided by q n (McMahan
et al.'s Alg. 1, exactly what the ledger composes); with the clients' shares exactly
q n clients a round, accounted as Poisson (an approximation; secure_ffm/engine/sampling.py).

Adaptive clipping: each client also reports b = 1[||Δ|| <= C] through the same
aggregation, noised with std σ_b; the server sets C <- C exp(-η (b̄ - γ)). By Andrew
et al. Theorem 1, the pair costs as much privacy as one Gaussian mechanism with
z = (z_Δ^-2 + (2 σ_b)^-2)^(-1/2), so the update noise uses z_Δ = (z^-2 - (2 σ_b)^-2)^(-1/2).

The noise comes from secrets the server cannot reproduce (secure_ffm.privacy.noise):
each client's shares from its own secret drawn from the OS CSPRNG, the central noise
from the server's secret; with ``secure_mode`` (the default) through an AES-CTR CSPRNG
and the floating-point mitigation of Opacus' secure mode (Mironov, CCS 2012, showed
that textbook floating-point noise leaks).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secure_ffm.config import Config, PrivacyConfig
from secure_ffm.data.base import FederatedData
from secure_ffm.engine.aggregation import PROTOCOLS, Aggregate, AggregateStep, AggregationProtocol
from secure_ffm.engine.transforms import TransformContext, UpdateTransform
from secure_ffm.engine.wire import ClientUpdate, Scalar
from secure_ffm.errors import ConfigError
from secure_ffm.privacy import accounting
from secure_ffm.privacy.accounting import GaussianSteps, PrivacyLedger
from secure_ffm.privacy.distributed import DiscreteGaussianShare, DiscreteGaussianSum, ScaleDiscreteSum, minimum_shares
from secure_ffm.privacy.gaussian import add_gaussian_noise, clip_l2
from secure_ffm.privacy.mechanisms import PrivacyMechanism, check_extension, plan_header, planned_federated_rounds, run_federated_rounds
from secure_ffm.privacy.noise import CENTRAL_NOISE, CLIENT_SAMPLING, NOISE_SHARE, NoisePolicy, NoiseStream

log = logging.getLogger(__name__)

UNCLIPPED = "unclipped"
"""The statistic of adaptive clipping: each client's ``b - 1/2``, with ``b`` = 1 when its update's norm was at most C
(Andrew et al., 2021). Centred, as TensorFlow Privacy's quantile estimator does, so that one client moves the sum by
at most 1/2, the sensitivity behind the accounting's ``(z_Δ^-2 + (2σ_b)^-2)^-1/2``; the server adds 1/2 back to the
noised mean (:class:`AdaptClipNorm`). Until 2026-12-07 ``b`` itself was sent, whose sensitivity 1 the accounting
counted as 1/2: ε was understated (3.9 against the 3.0 reported at σ_b = 2, z = 1.62)."""
UNCLIPPED_CENTRE = 0.5


def round_clip_norm(context: TransformContext, own: float, *, follows_server: bool) -> float:
    """The clip norm C a client uses this round: its own config's, or with adaptive clipping the one the server's
    instructions name (it moves every round, and only the server knows where to).

    A client that followed the server's C without adaptive clipping would let a server that sends one client a larger
    C than the others scale that client's sensitivity and its own noise share while the other shares stay small: the
    sum's noise relative to that client's update would fall toward one share's, ``1/sqrt(m)`` of the planned noise.
    With adaptive clipping that remains possible against an active server (docs/threat_model.md)."""
    return float(context.config.get("clip_norm", own)) if follows_server else float(own)


class ClipUpdate(UpdateTransform):
    """Scale the whole update to L2 norm at most C (:func:`round_clip_norm`: the client's own ``clip_norm``, or the
    round's setting under adaptive clipping)."""

    name = "clip"

    def __init__(self, *, clip_norm: float, report_unclipped: bool = False, follows_server: bool = False) -> None:
        self.clip_norm = clip_norm
        self.report_unclipped = report_unclipped
        self.follows_server = follows_server

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        c = round_clip_norm(context, self.clip_norm, follows_server=self.follows_server)
        clipped, norm = clip_l2(update.delta, c)
        if not math.isfinite(norm):
            # local training diverged to NaN or infinity, which a crafted model can make depend on one example: the
            # client sends the zero update (norm 0 <= C) instead of declining or sending NaN, either of which the server
            # would read beside the noise; counted as clipped
            clipped = {k: np.zeros_like(np.asarray(v)) for k, v in update.delta.items()}
        out = ClientUpdate(
            update.client_id, update.round, clipped, update.num_examples, {**update.metrics, "update_norm": norm}, dict(update.statistics)
        )
        if self.report_unclipped:
            out = out.with_statistics(**{UNCLIPPED: np.asarray([(1.0 if norm <= c else 0.0) - UNCLIPPED_CENTRE])})
        return out


SMALL_SAMPLE_DELTA_SHARE = 0.01
"""Poisson rounds too small to aggregate may add at most this share of δ (else ``auto`` samples fixed-size rounds)."""


def small_sample_delta(*, num_clients: int, sample_rate: float, fewest: int, rounds: int, epsilon: float) -> float:
    """What Poisson rounds too small to aggregate add to δ: ``(1 + e^ε) T p``, with ``p`` the largest chance over
    neighbouring federations (``n - 1`` or ``n`` clients) that a round samples between 1 and ``fewest - 1`` clients.

    Such a round releases the noise alone where the analysed mechanism releases the sum plus the noise; both coincide
    unless one of the ``T`` rounds is that small (a union bound gives ``T p``), and a mechanism that equals an
    (ε, δ)-DP one except on an event of probability at most ``P`` under every input is (ε, δ + (1 + e^ε) P)-DP."""
    if fewest <= 1 or rounds <= 0:
        return 0.0
    from scipy.stats import binom

    p = max(float(binom.cdf(fewest - 1, size, sample_rate) - binom.pmf(0, size, sample_rate)) for size in (num_clients - 1, num_clients))
    return min(1.0, (1.0 + math.exp(min(epsilon, 700.0))) * rounds * max(p, 0.0))


def claimed_participants(claimed: object, *, planned: int) -> int:
    """The m a client's noise share is sized for (σ / √m): the round size the server's instructions claim, at most the one
    the client's own config plans (claiming more would shrink every share), and 1 (the whole noise, never less) when the
    claim is not a positive whole number: 0 ended the client with ZeroDivisionError, -1 with a math domain error."""
    if isinstance(claimed, bool) or not isinstance(claimed, int | float) or not math.isfinite(claimed) or claimed < 1:
        return 1
    return max(1, min(int(claimed), planned))


class GaussianNoiseShare(UpdateTransform):
    """Distributed DP: add this client's share N(0, σ² / m) of the sum's noise N(0, σ²), with m the fewest shares a sum
    the server learns holds (CKKS's key holder decrypts no sum of fewer: :func:`~secure_ffm.privacy.distributed.minimum_shares`)."""

    name = "gaussian-share"

    def __init__(
        self, *, noise_multiplier: float, clip_norm: float, min_shares: int, statistics_std: float = 0.0, follows_server: bool = False
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.follows_server = follows_server
        """Whether the round's clip norm comes from the server's instructions (adaptive clipping): :func:`round_clip_norm`."""
        self.min_shares = min_shares
        """The fewest shares a sum holds, from the client's own config: a server claiming more cannot shrink the share."""
        self.statistics_std = statistics_std

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        if context.randomness is None:
            raise ValueError("gaussian-share needs the client's private randomness (TransformContext.randomness): its noise must be secret")
        m = claimed_participants(context.config.get("participants"), planned=self.min_shares)
        c = round_clip_norm(context, self.clip_norm, follows_server=self.follows_server)
        noise = context.randomness.stream(NOISE_SHARE, context.round)
        delta = add_gaussian_noise(update.delta, self.noise_multiplier * c / math.sqrt(m), noise)
        stats = add_gaussian_noise(update.statistics, self.statistics_std / math.sqrt(m), noise) if update.statistics else {}
        return ClientUpdate(update.client_id, update.round, delta, update.num_examples, dict(update.metrics), stats)


class CentralGaussianNoise(AggregateStep):
    """Server-side: noise N(0, (z C)^2) on the sum of uniformly weighted clipped updates, i.e. /m on their mean.

    Under Poisson client sampling (McMahan et al., ICLR 2018, Alg. 1: the fixed-denominator estimator) the sum is
    divided by the planned round size ``m = q n``, not by the number of clients that took part: that number depends on
    who was sampled, so dividing by it would scale the released sum by something the accounting does not cover, and
    an empty sample releases the noise alone (:attr:`acts_on_empty_rounds`). Under fixed-size sampling the divisor is
    the clients whose updates arrived (m unless some dropped out)."""

    def __init__(self, mechanism: DPFedAvg) -> None:
        self.mechanism = mechanism
        self.acts_on_empty_rounds = mechanism.poisson_sampling

    def __call__(self, round: int, aggregate: Aggregate) -> Aggregate:
        mech = self.mechanism
        rng = mech.noise_stream(round)
        if mech.poisson_sampling:
            m = float(mech.participants)
            share = aggregate.total_weight / m  # mean * total_weight is the sum of the clipped updates
            delta = {k: (np.asarray(v, dtype=np.float64) * share).astype(np.float32) for k, v in aggregate.mean_delta.items()}
            statistics = {k: np.asarray(v, dtype=np.float64) * share for k, v in aggregate.mean_statistics.items()}
        else:
            m, delta, statistics = aggregate.total_weight, aggregate.mean_delta, aggregate.mean_statistics
        mean = add_gaussian_noise(delta, mech.update_noise_multiplier * mech.clip_norm / m, rng)
        stats = (
            # σ_b of the round size the noise was calibrated for, not of the clients that arrived (dropouts would shrink it)
            add_gaussian_noise(statistics, mech.count_std(mech.participants) / m, rng) if statistics else {}
        )
        return aggregate.replace(mean_delta=mean, mean_statistics=stats)


class TopUpMissingShares(AggregateStep):
    """Client-placed noise without secure aggregation: the server adds, from its own secret, the shares of the planned
    participants whose update did not arrive (dropped, declined or rejected), so that the released sum carries the
    whole noise N(0, σ²) the ledger counts. Each share is N(0, σ² / m); ``m - k`` are missing when ``k`` arrived.

    Under masking or CKKS the server never sees a single update and the shares are sized for the smallest sum it can
    learn instead (:func:`~secure_ffm.privacy.distributed.minimum_shares`); without them it sees each update under its
    own share, and until 2026-12-07 a round with a dropout released an under-noised sum."""

    def __init__(self, mechanism: DPFedAvg) -> None:
        self.mechanism = mechanism

    def __call__(self, round: int, aggregate: Aggregate) -> Aggregate:
        mech = self.mechanism
        m, k = mech.participants, aggregate.num_clients
        if k >= m or k <= 0:
            return aggregate
        missing = math.sqrt((m - k) / m)
        rng = mech.noise_stream(round)  # the server's central stream, unused with client-placed noise
        mean = add_gaussian_noise(aggregate.mean_delta, mech.update_noise_multiplier * mech.clip_norm * missing / k, rng)
        stats = add_gaussian_noise(aggregate.mean_statistics, mech.count_std(m) * missing / k, rng) if aggregate.mean_statistics else {}
        return aggregate.replace(mean_delta=mean, mean_statistics=stats)


MAX_CLIP_LOG_STEP = 10.0
"""Most that adaptive clipping's geometric step moves log C in one round (a factor of about 22,000). With Andrew et al.'s
η = 0.2 and σ_b = m/20 a step is about 0.1 (|b - γ| stays near 1 or below); only settings far beyond them reach it, and
there the unbounded step overflowed (η or σ_b of 1e308 ended the run with OverflowError). Post-processing of the noised
count: no privacy cost."""


class AdaptClipNorm(AggregateStep):
    """Geometric update of the clip norm toward the γ quantile of update norms (Andrew et al., 2021, Alg. 1)."""

    def __init__(self, mechanism: DPFedAvg) -> None:
        self.mechanism = mechanism

    def __call__(self, round: int, aggregate: Aggregate) -> Aggregate:
        p = self.mechanism.config.privacy
        unclipped = float(np.asarray(aggregate.mean_statistics[UNCLIPPED]).reshape(-1)[0]) + UNCLIPPED_CENTRE
        self.mechanism.last_unclipped_fraction = unclipped
        log_step = -p.clip_learning_rate * (unclipped - p.target_unclipped_quantile)
        if not abs(log_step) <= MAX_CLIP_LOG_STEP:  # also an infinite or NaN step
            limited = math.copysign(MAX_CLIP_LOG_STEP, log_step) if not math.isnan(log_step) else 0.0
            log.warning(
                "round %d: adaptive clipping would scale the clip norm by exp(%.4g); limited to exp(%g) "
                "(privacy.clip_learning_rate = %g and privacy.clipped_count_stddev = %g are far beyond Andrew et al.'s 0.2 and m/20)",
                round,
                log_step,
                limited,
                p.clip_learning_rate,
                p.clipped_count_stddev,
            )
            log_step = limited
        self.mechanism.clip_norm *= math.exp(log_step)
        return aggregate


class DPFedAvg(PrivacyMechanism):
    """User-level (ε, δ)-DP of every client's whole contribution over the run."""

    name = "dp-fedavg"
    label = "DP-FedAvg"
    client_weighting = "uniform"  # one client moves the sum by at most C: the sensitivity the noise is calibrated to

    @classmethod
    def protections(cls, privacy: PrivacyConfig) -> dict[str, Any]:
        return {**super().protections(privacy), "clip_norm": privacy.clip_norm, "noise_placement": privacy.noise_placement}

    @classmethod
    def noise_shares_in_updates(cls, config: Config) -> bool:
        return config.privacy.noise_placement == "clients"

    @classmethod
    def client_answer_limit(cls, config: Config) -> int | None:
        """With client-placed noise, the rounds the client's own config plans (:func:`planned_federated_rounds`):
        ``epsilon_against_server`` is the Gaussian mechanism over the rounds a client took part in, which the server
        counts; a client that answered every request of a server that asked it more often (the same round again, or
        rounds past the plan) would spend more than any honest run's figure. With server-placed noise the server sees
        the exact sum anyway (no DP against it), so there is nothing to bound here."""
        return planned_federated_rounds(config) if config.privacy.noise_placement == "clients" else None

    def format_plan(self, plan: Mapping[str, Any]) -> str:
        lines = [plan_header(plan)]
        lines.append(
            f"user-level DP: {plan['rounds']} rounds at client sampling rate q = {plan['sample_rate']:.4f} "
            f"({plan['client_sampling']}), δ = {plan['delta']:.3g}"
        )
        lines.append(f"noise multiplier z = {plan['noise_multiplier']:.4f} (updates: {plan['update_noise_multiplier']:.4f})")
        lines.append(f"ε reached: {plan['epsilon']:.4f}; noise std on the mean update per coordinate: {plan['noise_std_on_mean']:.4g}")
        if plan.get("min_shares") and self.hides_updates:
            more = math.sqrt(plan["participants"] / plan["min_shares"])
            lines.append(
                f"clients' noise shares: any {plan['min_shares']} carry the full noise (no sum of fewer is released; "
                f"a round of all {plan['participants']} carries {more:.3f}x the planned noise)"
            )
        elif plan.get("min_shares"):
            lines.append(
                f"clients' noise shares: all {plan['min_shares']} carry the full noise; without secure aggregation the server "
                "sees each update under its own share and adds the shares of clients whose update is missing"
            )
        if plan.get("epsilon_fixed_size_replace_one") is not None:
            lines.append(
                f"fixed-size rounds: ε above accounts them as Poisson (an approximation); the bound for sampling without "
                f"replacement, replace-one neighbours: ε = {plan['epsilon_fixed_size_replace_one']:.4f}"
            )
        return "\n".join(lines)

    def __init__(self, config: Config, data: FederatedData) -> None:
        super().__init__(config, data)
        if config.model.linear_probe_rounds:
            raise ConfigError(
                "model.linear_probe_rounds",
                "DP-FedAvg noises every coordinate of the update, so head-only rounds would move the held-fixed parameters by noise",
                'set it to 0, or use privacy.mode = "dp-sgd" or "distributed-dp-sgd" (they noise only what a round trains)',
            )
        p = config.privacy
        every = run_federated_rounds(config)
        if p.planned_rounds and p.planned_rounds < every:
            raise ConfigError(
                "privacy.planned_rounds",
                f"{p.planned_rounds} is fewer than the run's {every} federated rounds, and DP-FedAvg's ledger is the server's: "
                "every round spends budget, so noise calibrated for fewer rounds would overspend the target",
                "leave it at 0 (DP-FedAvg plans for every federated round) or lower server.rounds",
            )
        n = data.num_clients
        m = min(config.server.clients_per_round or n, n)
        self.participants = m
        self.sample_rate = m / n
        sampling = config.server.client_sampling
        if sampling == "poisson" and p.noise_placement == "clients" and m < n:
            raise ConfigError(
                "server.client_sampling",
                "Poisson client sampling with the clients' noise shares: whether a client is sampled changes how many shares "
                "the sum carries, so the released noise is not the subsampled Gaussian mechanism the ledger composes",
                'use privacy.noise_placement = "server" with Poisson sampling, or server.client_sampling = "fixed"',
            )
        self.poisson_sampling = m < n and (sampling == "poisson" or (sampling == "auto" and p.noise_placement == "server"))
        self.small_sample_delta = 0.0
        """δ added by Poisson rounds too small for the protocol to aggregate (:func:`small_sample_delta`)."""
        if self.poisson_sampling:
            fewest = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").fewest_to_aggregate(config)
            delta = p.delta or accounting.default_delta(n)
            extra = small_sample_delta(
                num_clients=n, sample_rate=m / n, fewest=fewest, rounds=planned_federated_rounds(config), epsilon=p.target_epsilon
            )
            if extra > SMALL_SAMPLE_DELTA_SHARE * delta:
                if sampling == "poisson":
                    raise ConfigError(
                        "server.client_sampling",
                        f"a Poisson round of fewer than {fewest} clients cannot be aggregated by "
                        f"{config.secure_aggregation.protocol!r} and releases the noise alone, outside the accounting; over the run "
                        f"that adds {extra:.3g} to δ = {delta:.3g}",
                        'use server.client_sampling = "fixed", more clients per round, or a lower secure_aggregation.threshold',
                    )
                log.info(
                    "server.client_sampling = auto: fixed-size rounds, since Poisson rounds of fewer than %d clients (which %s "
                    "cannot aggregate) would add %.3g to δ = %.3g",
                    fewest,
                    config.secure_aggregation.protocol,
                    extra,
                    delta,
                )
                self.poisson_sampling = False
            else:
                self.small_sample_delta = extra
        """Whether rounds are Poisson samples (each client with probability q): the ledger's mechanism exactly. Otherwise
        exactly m clients a round, which the ledger accounts as Poisson at q = m / n, an approximation (:meth:`client_sampling`)."""
        self.rounds = planned_federated_rounds(config)  # the federated rounds: an FFM run's public units spend nothing
        self.rounds_planned = self.rounds
        self.delta = p.delta or accounting.default_delta(n)
        self.discrete: DiscreteGaussianSum | None = None
        """The distributed discrete Gaussian's geometry, fixed by the first update's size (discrete mode)."""
        protocol = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol")
        self.hides_updates = protocol.hides_updates
        """Whether the server sees only the sum (masking, CKKS): client-placed noise then protects each update with the
        whole sum's noise; otherwise with one share of it (:meth:`epsilon_against_server`)."""
        if p.noise_placement == "clients" and not self.hides_updates:
            log.warning(
                'privacy.noise_placement = "clients" without secure aggregation: the server sees each update under its own '
                "noise share only, N(0, (zC)^2/m); the released model keeps the whole noise. privacy.json's epsilon_against_server "
                'says what that gives; use secure_aggregation.protocol = "masking" or "ckks" for distributed DP'
            )
        self.discrete_mode = p.noise_placement == "clients" and bool(protocol.supports_integer_values)
        """Client noise under a protocol that sums integers exactly (masking): discrete shares, accounted as zCDP."""
        self.accountant = "zcdp" if self.discrete_mode else p.accountant
        if self.discrete_mode and p.adaptive_clipping:
            raise ConfigError(
                "privacy.adaptive_clipping",
                "adaptive clipping's noised count has no discrete-share version here: distributed noise under masking uses discrete "
                "Gaussian shares",
                'set privacy.adaptive_clipping = false, or privacy.noise_placement = "server"',
            )
        if p.delta and (reason := accounting.check_delta(p.delta, n)):
            log.warning("privacy.delta: %s (n = number of clients)", reason)
        if p.noise_multiplier > 0:
            self.noise_multiplier = p.noise_multiplier
            epsilon = self._epsilon_after(self.rounds)
            if epsilon > p.target_epsilon * (1 + 1e-9):
                raise ConfigError(
                    "privacy.noise_multiplier",
                    f"z={p.noise_multiplier} over {self.rounds} rounds spends ε={epsilon:.3f} > privacy.target_epsilon={p.target_epsilon}",
                    "raise it, or set 0 to calibrate it from the target",
                )
        else:
            self.noise_multiplier = accounting.calibrate_noise_multiplier(
                target_epsilon=p.target_epsilon,
                delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.rounds,
                accountant=self.accountant,
            )
        self.update_noise_multiplier = self.noise_multiplier
        if p.adaptive_clipping:
            two_sigma = 2 * self.count_std(m)
            if two_sigma <= self.noise_multiplier:
                raise ConfigError(
                    "privacy.clipped_count_stddev",
                    f"2 σ_b = {two_sigma:.3g} must exceed the noise multiplier z = {self.noise_multiplier:.3g} for adaptive clipping",
                    f"set privacy.clipped_count_stddev above {self.noise_multiplier / 2:.3g} or sample more clients per round",
                )
            self.update_noise_multiplier = (self.noise_multiplier**-2 - two_sigma**-2) ** -0.5
        self.clip_norm = p.clip_norm
        self.last_unclipped_fraction: float | None = None
        self.user_ledger = PrivacyLedger(accountant=self.accountant, delta=self.delta)
        self.clip_history: list[float] = []
        self.noise_policy = NoisePolicy.from_config(config)
        self.server_randomness = self.noise_policy.server()
        self._shares: list[GaussianNoiseShare] = []
        self.participations: dict[int, int] = {}
        """Rounds each client was sampled for: the server knows them, so against it there is no amplification."""

    def count_std(self, participants: int) -> float:
        """σ_b of the noise on the unclipped count (0 without adaptive clipping; default m/20 as in Andrew et al.)."""
        p = self.config.privacy
        if not p.adaptive_clipping:
            return 0.0
        return p.clipped_count_stddev or participants / 20.0

    def _epsilon_after(self, rounds: int) -> float:
        ledger = PrivacyLedger(accountant=self.accountant, delta=self.delta)
        ledger.record(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=rounds)
        return ledger.epsilon()

    def update_statistics(self) -> dict[str, np.ndarray]:
        return {UNCLIPPED: np.zeros(1)} if self.config.privacy.adaptive_clipping else {}

    @property
    def secret_participation(self) -> bool:
        """ε amplifies by subsampling (q = m / n < 1): against a reader who knows who took part it would be the
        Gaussian mechanism over the rounds a client was in, far larger (7.98 -> 14.3 in the audit's run)."""
        return self.sample_rate < 1

    def client_sampling(self) -> str:
        """Poisson under the server's noise unless the config asks for fixed-size rounds: the ledger composes the
        Poisson-subsampled Gaussian mechanism (add/remove neighbours), which Poisson rounds with the fixed denominator
        are. Under the clients' noise shares, fixed-size rounds (the number of shares must not depend on who was
        sampled); the ledger then accounts them as Poisson at q = m / n, as McMahan et al. and TensorFlow Federated
        do, an approximation (fixed-size sampling pairs with replace-one neighbours; docs/threat_model.md)."""
        return "poisson" if self.poisson_sampling else "fixed"

    def fixed_size_epsilon(self, history: Sequence[tuple[float, float, int]]) -> float | None:
        """Under fixed-size rounds (exactly m of n clients, q = m / n < 1), the bound that holds for them: Wang, Balle &
        Kasiviswanathan's subsampling without replacement, replace-one neighbours
        (:mod:`secure_ffm.privacy.without_replacement`), composed over ``history``'s ``(z, q, rounds)`` entries. None
        when the rounds are Poisson samples or every client takes part (the ledger's ε is then exact)."""
        if self.poisson_sampling or self.sample_rate >= 1:
            return None
        from secure_ffm.privacy.without_replacement import fixed_size_epsilon

        return fixed_size_epsilon(entries=history, delta=self.delta)

    def _sampling_note(self) -> str:
        if self.sample_rate >= 1:
            return "every client takes part in every round (q = 1)"
        if self.poisson_sampling:
            return "Poisson: each client independently with probability q; the sum is divided by q n (the mechanism the ledger composes)"
        return (
            "fixed-size: exactly q n clients a round, accounted as Poisson sampling at q (an approximation, as in McMahan et al. "
            "and TensorFlow Federated); epsilon_fixed_size_replace_one is the bound that holds for these rounds (sampling without "
            'replacement, replace-one neighbours); server.client_sampling = "poisson" with the server\'s noise makes epsilon exact'
        )

    def sampling_generator(self, round: int) -> np.random.Generator:
        """User-level amplification by subsampling (q = m / n) assumes outsiders do not know who took part:
        the server samples from its secret, not from run.seed (which config.toml publishes)."""
        return self.server_randomness.generator(CLIENT_SAMPLING, round)

    def noise_stream(self, round: int) -> NoiseStream:
        """The central noise of ``round``, from the server's secret (kept only in its checkpoint)."""
        return self.server_randomness.stream(CENTRAL_NOISE, round)

    # ------------------------------------------------------------------ seams

    def discrete_geometry(self, dim: int) -> DiscreteGaussianSum:
        """The discrete shares' public geometry for updates of ``dim`` coordinates (discrete mode)."""
        if self.discrete is None or self.discrete.dim != dim:
            self.discrete = DiscreteGaussianSum(
                clip_norm=self.config.privacy.clip_norm,
                noise_multiplier=self.update_noise_multiplier,
                min_shares=minimum_shares(self.config),
                max_shares=self.participants,
                contributions=self.participants,
                dim=dim,
            )
        return self.discrete

    def configure_protocol(self, protocol: AggregationProtocol) -> None:
        if self.discrete_mode:
            protocol.use_integer_values()
        if self.noise_shares_in_updates(self.config):
            protocol.protect_sums_of(minimum_shares(self.config))  # what each share is sized for: no sum the server learns holds fewer

    def client_transforms(self) -> list[UpdateTransform]:
        p = self.config.privacy
        adaptive = p.adaptive_clipping
        transforms: list[UpdateTransform] = [ClipUpdate(clip_norm=p.clip_norm, report_unclipped=adaptive, follows_server=adaptive)]
        if self.discrete_mode:
            transforms.append(DiscreteGaussianShare(self))
        elif p.noise_placement == "clients":
            share = GaussianNoiseShare(
                noise_multiplier=self.update_noise_multiplier,
                clip_norm=p.clip_norm,
                min_shares=minimum_shares(self.config),
                statistics_std=self.count_std(self.participants),
                follows_server=adaptive,
            )
            self._shares.append(share)
            transforms.append(share)
        return transforms

    def decoding_steps(self) -> list[AggregateStep]:
        return [ScaleDiscreteSum(self)] if self.discrete_mode else []

    def aggregate_steps(self) -> list[AggregateStep]:
        steps: list[AggregateStep] = self.decoding_steps()
        if self.config.privacy.noise_placement == "server":
            steps.append(CentralGaussianNoise(self))
        elif not self.hides_updates:
            steps.append(TopUpMissingShares(self))
        if self.config.privacy.adaptive_clipping:
            steps.append(AdaptClipNorm(self))
        return steps

    def fit_config(self, round: int, participants: Sequence[int]) -> dict[str, Scalar]:
        self.clip_history.append(self.clip_norm)
        for client in participants:
            self.participations[int(client)] = self.participations.get(int(client), 0) + 1
        return {"weighting": self.client_weighting, "clip_norm": self.clip_norm}

    def round_metrics(self, round: int, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        self.user_ledger.record(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=1)
        return self.public_unit_metrics(round, client_states)

    def public_unit_metrics(self, round: int, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epsilon": self.user_ledger.epsilon(),
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_history[-1] if self.clip_history else self.clip_norm,
        }
        if self.last_unclipped_fraction is not None:
            row["unclipped_fraction"] = self.last_unclipped_fraction
        return row

    def ledger(self, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        p = self.config.privacy
        return {
            "mechanism": "dp-fedavg",
            "level": "user",
            "accountant": self.accountant,
            **({"discrete_noise": self.discrete.describe()} if self.discrete is not None else {}),
            "target_epsilon": p.target_epsilon,
            "epsilon": self.user_ledger.epsilon(),
            "epsilon_against_server": self.epsilon_against_server(),
            "epsilon_against_server_note": self._against_server_note(),
            "delta": self.delta,
            "rounds": self.user_ledger.steps,
            "sample_rate": self.sample_rate,
            "client_sampling": self.client_sampling(),
            "client_sampling_note": self._sampling_note(),
            "small_sample_delta": self.small_sample_delta,
            "epsilon_fixed_size_replace_one": self.fixed_size_epsilon([entry.as_opacus() for entry in self.user_ledger.history]),
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.update_noise_multiplier,
            "clip_norm": p.clip_norm,
            "final_clip_norm": self.clip_norm,
            "adaptive_clipping": p.adaptive_clipping,
            "noise_placement": p.noise_placement,
            "history": self.user_ledger.to_json()["history"],
            "noise": self.noise_policy.describe(),
        }

    def plan(self) -> dict[str, Any]:
        p = self.config.privacy
        return {
            "mechanism": "dp-fedavg",
            "accountant": self.accountant,
            "target_epsilon": p.target_epsilon,
            "delta": self.delta,
            "rounds": self.rounds,
            "sample_rate": self.sample_rate,
            "client_sampling": self.client_sampling(),
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.update_noise_multiplier,
            "epsilon": self._epsilon_after(self.rounds),
            "epsilon_fixed_size_replace_one": self.fixed_size_epsilon(((self.noise_multiplier, self.sample_rate, self.rounds),)),
            "noise_std_on_mean": self.update_noise_multiplier * p.clip_norm / self.participants * self.share_inflation(),
            "min_shares": minimum_shares(self.config) if p.noise_placement == "clients" else None,
            "participants": self.participants,
            "noise": self.noise_policy.describe(),
        }

    def share_inflation(self) -> float:
        """How much more noise than planned a round of every participant carries: shares are sized for the fewest a
        released sum may hold (s of m), so m of them sum to σ √(m / s). 1 with the server's noise."""
        if self.config.privacy.noise_placement != "clients":
            return 1.0
        return math.sqrt(self.participants / minimum_shares(self.config))

    def epsilon_against_server(self) -> float | None:
        """ε of the worst-off client against the server itself (None: the server sees the exact sum).

        ``epsilon`` assumes amplification by subsampling (q = m / n), which holds against whoever sees only
        the released model. The server knows whom it sampled, so against it each round a client took part
        in is a plain Gaussian mechanism (q = 1), and since it knows who took part, the neighbouring runs it must not tell
        apart replace one participant's update by another (sensitivity 2C: noise multiplier z / 2): with client-side
        noise (distributed DP under secure aggregation) that is the guarantee the server cannot break. The shares are
        sized for the fewest a sum the server learns holds (:func:`~secure_ffm.privacy.distributed.minimum_shares`):
        masking's threshold keeps a lying server from unmasking fewer, CKKS's key holder decrypts no sum of fewer.
        Without secure aggregation the shares are sized for every participant, and the server adds the shares of
        clients whose update is missing (:class:`TopUpMissingShares`), so the released sum carries the whole noise.

        Without a protocol that hides single updates (``secure_aggregation.protocol = "none"``) the server reads each
        client's update under that client's own share alone, N(0, (zC)² / m): the figure is then the Gaussian
        mechanism with noise multiplier z / √m (until 2026-12-07 it claimed the whole sum's z there too).
        """
        if self.config.privacy.noise_placement != "clients":
            return None
        most = max(self.participations.values(), default=0)
        if most == 0:
            return 0.0
        z = self.noise_multiplier if self.hides_updates else self.noise_multiplier / math.sqrt(self.participants)
        # the server knows who took part, so what it must not learn is what a present client sent: replacing one clipped
        # update by another moves the sum by up to 2C (replace-one neighbours), i.e. the noise acts as z / 2 (until
        # 2026-12-07 this counted add/remove's C, which the server's knowledge of the participants voids)
        return accounting.compute_epsilon([GaussianSteps(z / 2, 1.0, most)], accountant=self.accountant, delta=self.delta)

    def _against_server_note(self) -> str:
        if self.config.privacy.noise_placement != "clients":
            return "noise_placement = server: the server sees the exact sum before it adds the noise; DP protects the released model only"
        if self.discrete is not None:
            return (
                "q = 1 over the rounds the most-sampled client took part in, replace-one (sensitivity 2C: the server knows who "
                f"took part); discrete shares are sized so that any {self.discrete.min_shares} of them carry the full noise"
            )
        if not self.hides_updates:
            return (
                f"q = 1 over the rounds the most-sampled client took part in, replace-one (sensitivity 2C: the server knows who "
                f"took part), at z / sqrt(m) = z / sqrt({self.participants}): "
                f"secure_aggregation.protocol = {self.config.secure_aggregation.protocol!r} shows the server each update under its "
                "own noise share only"
            )
        return (
            "q = 1 over the rounds the most-sampled client took part in, replace-one (sensitivity 2C: the server knows who took "
            f"part); shares are sized so that any {minimum_shares(self.config)} of them carry the full noise, and "
            f"{self.config.secure_aggregation.protocol} releases no sum of fewer"
        )

    def check_budget(self, *, completed_rounds: int, total_rounds: int, client_states: Mapping[int, Mapping[str, Any]]) -> None:
        check_extension(
            self.user_ledger,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            ffm=self.config.ffm,
            total_rounds=total_rounds,
            completed_rounds=completed_rounds,
            target=self.config.privacy.target_epsilon,
            planned=f"the run's noise multiplier z={self.noise_multiplier:.4g} was calibrated for {self.rounds_planned} rounds",
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.user_ledger.to_json(),
            "clip_norm": self.clip_norm,
            "last_unclipped_fraction": self.last_unclipped_fraction,
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.update_noise_multiplier,
            "planned_rounds": self.rounds_planned,
            "client_sampling": self.client_sampling(),
            "participations": {str(k): v for k, v in sorted(self.participations.items())},
            # the server's own secret, so a resumed run draws the same noise; only in its checkpoint
            "noise_secret": self.server_randomness.secret.hex() if self.noise_policy.reproducible_seed is None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.user_ledger = PrivacyLedger.from_json(state["ledger"])
            self.clip_norm = float(state["clip_norm"])
            self.last_unclipped_fraction = state.get("last_unclipped_fraction")
            # the noise stays the one the run was calibrated with, whatever server.rounds says now
            self.noise_multiplier = float(state.get("noise_multiplier", self.noise_multiplier))
            self.update_noise_multiplier = float(state.get("update_noise_multiplier", self.update_noise_multiplier))
            self.rounds_planned = int(state.get("planned_rounds", self.rounds_planned))
            sampled = state.get("client_sampling")
            if sampled is not None and sampled != self.client_sampling() and self.sample_rate < 1:
                # auto decides from the run's rounds (small_sample_delta): a resume with other rounds must not switch the
                # rounds still to come to a mechanism that the ledger's first rounds did not use
                why = (
                    f"Poisson rounds too small to aggregate would add more than {SMALL_SAMPLE_DELTA_SHARE:.0%} of δ over these rounds"
                    if sampled == "poisson"
                    else "server.client_sampling = auto picks Poisson rounds for these rounds"
                )
                keep = "fewer rounds" if sampled == "poisson" else 'server.client_sampling = "fixed"'
                raise ConfigError(
                    "server.rounds",
                    f"the run's first rounds were {sampled} samples of clients, its next would be {self.client_sampling()} ({why})",
                    f"resume with {keep}, or start a new run",
                )
            self.participations = {int(k): int(v) for k, v in state.get("participations", {}).items()}
            for share in self._shares:
                share.noise_multiplier = self.update_noise_multiplier
            if state.get("noise_secret"):
                self.server_randomness = self.noise_policy.server(state["noise_secret"])
