"""Privacy accounting for DP-SGD and DP-FedAvg: ledgers, ε, noise calibration.

Both DP-SGD (one client's examples are the protected unit) and DP-FedAvg (a whole
client is the protected unit) repeat the same mechanism: the *Poisson-subsampled
Gaussian mechanism*. Each step includes every unit independently with probability
``q`` (the sample rate), sums their clipped contributions and adds Gaussian noise
whose standard deviation is ``z`` (the noise multiplier) times the clipping norm.
A party's privacy loss is therefore fully described by its history of
``(z, q, steps)`` entries, which is what :class:`PrivacyLedger` stores and what
Opacus' accountants consume.

The accountants (registered in :data:`ACCOUNTANTS`, chosen with ``privacy.accountant``):

``rdp``
    Rényi DP (Mironov, "Rényi Differential Privacy", CSF 2017) with the RDP of the
    subsampled Gaussian mechanism from Mironov, Talwar & Zhang, "Rényi Differential
    Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530 (2019), converted
    to (ε, δ) with Balle et al., AISTATS 2020, Thm. 21. A strict upper bound on ε,
    but the loosest of the three (about 8-10 % above PRV at ε of a few, far more at
    small ε). With Opacus' default orders (α <= 63) it cannot report ε below about
    (ln(1/δ) - ln 63) / 62, e.g. 0.103 at δ = 1e-5.
``prv``
    Numerical composition of privacy loss random variables (Gopi, Lee & Wutschitz,
    "Numerical Composition of Differential Privacy", NeurIPS 2021). Discretises the
    privacy loss and composes it with FFTs; reports the *upper* end of an interval
    of width ``2·eps_error`` (0.01 here) around the estimate, so it is a rigorous
    upper bound and the tightest of the three. It can never report ε below 0.01.
``gdp``
    Gaussian DP through the central limit theorem (Dong, Roth & Su, "Gaussian
    Differential Privacy", arXiv:1905.02383, 2019; Bu et al., "Deep Learning with
    Gaussian Differential Privacy", HDSR 2020). The CLT is an *approximation*: it
    can **underestimate** ε and is **not** an upper bound, especially for few steps
    or large sample rates (Gopi et al. 2021 exhibit such cases). Use it for comparisons only;
    a warning is logged whenever a ledger or a calibration uses it, and a run's config refuses it
    (``privacy.accountant``): noise calibrated with it for ε = 8 (q = 0.01, 1,000 steps) gives 10.1 by ``prv``.

``rdp`` and ``prv`` are Opacus' accountants with the sampled Gaussian's RDP computed
by :mod:`secure_ffm.privacy.sampled_gaussian` (vectorized; PRV's ε is Opacus' bitwise,
RDP's within 1e-10 relative). Every ε is computed from scratch from the history by a
fresh accountant (no hidden state to go stale), and memoised by ``(accountant, δ, history)``, so asking
again for the same history (``epsilon_if`` then ``record`` then ``epsilon``) is free.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from opacus.accountants import GaussianAccountant, IAccountant
from opacus.accountants.analysis import gdp as gdp_analysis
from threadpoolctl import threadpool_limits

from secure_ffm.config import MAX_NOISE_MULTIPLIER
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.sampled_gaussian import PRVAccountant, RDPAccountant
from secure_ffm.registry import Registry

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "secure_ffm.privacy_ledger"
LEDGER_VERSION = 1


_MIN_START = 1.0 / 64

APPROXIMATE_ACCOUNTANTS = frozenset({"gdp"})
"""Accountants whose ε is an approximation rather than an upper bound."""

FALLBACK_ACCOUNTANT = "rdp"
"""Used when another accountant fails numerically; its ε is always a valid upper bound."""

OpacusHistory = tuple[tuple[float, float, int], ...]

ACCOUNTANTS: Registry[type[IAccountant]] = Registry("accountant")
"""``privacy.accountant`` name -> Opacus accountant class."""

ACCOUNTANTS.register("rdp")(RDPAccountant)
ACCOUNTANTS.register("prv")(PRVAccountant)


@ACCOUNTANTS.register("gdp")
class ComposedGaussianAccountant(GaussianAccountant):
    """Opacus' :class:`~opacus.accountants.GaussianAccountant`, extended to histories of several entries.

    Opacus' version only reads ``history[-1]``: given ``[(z1, q1, T1), (z2, q2, T2)]``
    it silently reports the ε of the last entry alone. Here the CLT parameters of the
    entries compose as μ = sqrt(Σ μ_i²) (Dong et al. 2019, §3: μ_i-GDP mechanisms
    compose to sqrt(Σ μ_i²)-GDP; the CLT of Bu et al. 2020 gives μ_i = q_i·sqrt(T_i·(exp(1/z_i²) - 1)) for
    Poisson sampling). With a single entry it returns exactly what Opacus returns.
    ``step`` merges like :class:`~opacus.accountants.RDPAccountant` instead of
    refusing a change of ``(z, q)``.

    The construction does not emit Opacus' ``UserWarning`` on every instantiation
    (ε is recomputed often); callers log once instead (see ``APPROXIMATE_ACCOUNTANTS``).
    The result is still only an approximation of ε, not an upper bound.
    """

    def __init__(self) -> None:
        IAccountant.__init__(self)

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        self.history = [tuple(e) for e in _append(_entries(self.history), GaussianSteps(noise_multiplier, sample_rate, 1))]

    def get_epsilon(self, delta: float, poisson: bool = True, **kwargs: Any) -> float:
        if not self.history:
            return 0.0
        if len(self.history) == 1:
            return super().get_epsilon(delta, poisson, **kwargs)
        mu_of = gdp_analysis.compute_mu_poisson if poisson else gdp_analysis.compute_mu_uniform
        mu = math.sqrt(sum(mu_of(steps=t, noise_multiplier=z, sample_rate=q) ** 2 for z, q, t in self.history))
        return gdp_analysis.eps_from_mu(mu=mu, delta=delta)


ZCDP_ORDERS: tuple[float, ...] = tuple(sorted({*RDPAccountant.DEFAULT_ALPHAS, *range(2, 65), 80, 96, 128, 192, 256}))
"""Rényi orders of :class:`SubsampledZCDPAccountant`: Opacus' (so that without subsampling it equals ``rdp``) and more
integers. The Zhu & Wang bound is stated for integer orders; a fractional order takes its ceiling's value (RDP is
non-decreasing in the order)."""


@ACCOUNTANTS.register("zcdp")
class SubsampledZCDPAccountant(IAccountant):
    """RDP accounting of a mechanism known only through a concentrated-DP bound, with Poisson subsampling.

    An entry ``(z, q, T)`` is T steps, each of which includes every unit with probability ``q`` and then runs a
    mechanism that is ρ-zCDP (Bun & Steinke, TCC 2016) with ρ = 1 / (2 z²), i.e. of Rényi DP ``α / (2 z²)`` at every
    order α: the Gaussian mechanism's curve, which is why ``z`` reads as a Gaussian-equivalent noise multiplier.
    The sum of the clients' distributed discrete Gaussian shares is such a mechanism (Kairouz, Liu & Steinke,
    ICML 2021; secure_ffm.privacy.distributed computes its z), but it is not a Gaussian: the sampled-Gaussian analyses
    behind ``rdp`` and ``prv`` do not apply to it. Subsampling uses the general upper bound of Zhu & Wang, "Poisson
    Subsampled Rényi Differential Privacy", ICML 2019 (Theorem 6), which holds for any mechanism with that RDP
    curve; steps compose by adding RDP, and (ε, δ) comes from Opacus' RDP conversion (Balle et al., AISTATS 2020).
    At q = 1 this equals the ``rdp`` accountant's Gaussian mechanism; for q < 1 it is somewhat looser.
    """

    def __init__(self) -> None:
        IAccountant.__init__(self)

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        self.history = [tuple(e) for e in _append(_entries(self.history), GaussianSteps(noise_multiplier, sample_rate, 1))]

    def rdp(self) -> np.ndarray:
        """The composed RDP of the history at :data:`ZCDP_ORDERS`."""
        from secure_ffm.privacy.discrete_gaussian import subsampled_rdp

        orders = np.asarray(ZCDP_ORDERS, dtype=np.float64)
        ceilings = np.ceil(orders).astype(np.int64)
        integers = np.unique(np.maximum(ceilings, 2))
        total = np.zeros_like(orders)
        for z, q, steps in self.history:

            def curve(alphas: np.ndarray, z: float = z) -> np.ndarray:
                return np.asarray(alphas, dtype=np.float64) / (2.0 * z * z)

            if q == 1.0:
                total += steps * curve(orders)
                continue
            at = dict(zip(integers.tolist(), subsampled_rdp(integers, curve, sample_rate=q).tolist(), strict=True))
            total += steps * np.asarray([at[max(int(c), 2)] for c in ceilings])
        return total

    def get_epsilon(self, delta: float, **kwargs: Any) -> float:
        if not self.history:
            return 0.0
        import warnings

        from opacus.accountants.analysis.rdp import get_privacy_spent

        with warnings.catch_warnings():  # "optimal order is the largest/smallest alpha": the bound holds regardless
            warnings.simplefilter("ignore", UserWarning)
            epsilon, _ = get_privacy_spent(orders=list(ZCDP_ORDERS), rdp=self.rdp(), delta=delta)
        return float(epsilon)

    def __len__(self) -> int:
        return sum(steps for _, _, steps in self.history)

    @classmethod
    def mechanism(cls) -> str:
        return "zcdp"


# --------------------------------------------------------------------------- validation


def finite_number(value: object) -> bool:
    """A real number (not a bool) that a float holds and that is finite."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float64 (a ledger read from JSON, e.g. a node's report)
        return False


MAX_PRV_TARGET_EPSILON = 100.0
"""Largest budget the ``prv`` accountant calibrates for: above it the noise multiplier is so small that PRV's
discretization fails (Opacus: "Discrete mean differs significantly from continuous mean") after minutes per call (ε =
10,000 ran past two minutes on a 4-client config, ε = 100 took 86 s on 20 clients against 6-8 s at ε = 8); ``rdp`` and
``zcdp`` calibrate such budgets in seconds (tests use ε = 1e9 for noise too small to matter)."""


def _check_target_epsilon(target_epsilon: float, accountant: str | None = None) -> float:
    if not finite_number(target_epsilon) or target_epsilon <= 0:
        raise ConfigError(
            "privacy.target_epsilon", f"must be a positive finite number, got {target_epsilon!r}", "set e.g. privacy.target_epsilon = 8.0"
        )
    if accountant == "prv" and target_epsilon > MAX_PRV_TARGET_EPSILON:
        raise ConfigError(
            "privacy.target_epsilon",
            f"{target_epsilon!r} is above {MAX_PRV_TARGET_EPSILON:g}, where the prv accountant's calibration runs for minutes and fails",
            'state a budget of at most 100, or set privacy.accountant = "rdp" (an upper bound too)',
        )
    return float(target_epsilon)


def _check_delta(delta: float) -> float:
    if not finite_number(delta) or not 0 < delta < 1:
        raise ConfigError(
            "privacy.delta", f"must lie strictly between 0 and 1, got {delta!r}", "use a value below 1/num_examples, e.g. default_delta(n)"
        )
    return float(delta)


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_steps(steps: int, key: str) -> int:
    if not _is_count(steps):
        raise ConfigError(key, f"must be a whole number >= 1, got {steps!r}", f"set {key} to a positive integer")
    return int(steps)


def _check_num_examples(num_examples: int) -> int:
    if not _is_count(num_examples):
        raise ValueError(f"num_examples must be a whole number >= 1, got {num_examples!r}")
    return int(num_examples)


@dataclass(frozen=True)
class GaussianSteps:
    """``steps`` applications of the Poisson-subsampled Gaussian mechanism with fixed ``(z, q)``.

    ``noise_multiplier`` is the noise standard deviation divided by the L2
    sensitivity (the clipping norm); ``sample_rate`` is the probability that a unit
    (an example in DP-SGD, a client in DP-FedAvg) takes part in a step.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        z, q = self.noise_multiplier, self.sample_rate
        if not finite_number(z) or z <= 0:
            raise ConfigError(
                "privacy.noise_multiplier",
                f"must be a positive finite number, got {z!r}",
                "a noise multiplier of 0 gives no privacy; use e.g. 1.0",
            )
        if not finite_number(q) or not 0 < q <= 1:
            raise ConfigError(
                "privacy.sample_rate",
                f"must lie in (0, 1], got {q!r}",
                "the sample rate is batch_size / num_examples (or clients_per_round / num_clients)",
            )
        object.__setattr__(self, "noise_multiplier", float(z))
        object.__setattr__(self, "sample_rate", float(q))
        object.__setattr__(self, "steps", _check_steps(self.steps, "privacy.steps"))

    def as_opacus(self) -> tuple[float, float, int]:
        """The ``(noise_multiplier, sample_rate, num_steps)`` tuple of Opacus' ``accountant.history``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def _entries(history: Iterable[tuple[float, float, int]]) -> tuple[GaussianSteps, ...]:
    return tuple(GaussianSteps(z, q, t) for z, q, t in history)


def _append(history: tuple[GaussianSteps, ...], entry: GaussianSteps) -> tuple[GaussianSteps, ...]:
    """``history`` followed by ``entry``, merged into the last entry when ``(z, q)`` is identical (as Opacus does)."""
    if history and (history[-1].noise_multiplier, history[-1].sample_rate) == (entry.noise_multiplier, entry.sample_rate):
        last = history[-1]
        return history[:-1] + (GaussianSteps(last.noise_multiplier, last.sample_rate, last.steps + entry.steps),)
    return history + (entry,)


# --------------------------------------------------------------------------- ε


@functools.lru_cache(maxsize=1024)
def _cached_epsilon(accountant: str, delta: float, history: OpacusHistory) -> float:
    if not history:
        return 0.0
    opacus_accountant = ACCOUNTANTS.get(accountant, key="privacy.accountant")()
    opacus_accountant.history = list(history)
    try:
        # PRV takes log(1 - q) = -inf at q = 1, by design. One BLAS thread: PRV's one dot product of a few hundred
        # thousand values made OpenBLAS wake a second thread that spun on the other core for the whole evaluation
        # (CPU time twice the wall time, no faster), taking that core from the worker pool and from other calibrations
        with np.errstate(divide="ignore"), threadpool_limits(limits=1, user_api="blas"):
            epsilon = float(opacus_accountant.get_epsilon(delta=delta))
        if math.isnan(epsilon):
            raise ArithmeticError("accountant returned NaN")
    except (ArithmeticError, ValueError, RuntimeError) as exc:
        if accountant in (FALLBACK_ACCOUNTANT, "zcdp"):  # the Gaussian RDP bound does not cover zcdp's mechanisms
            raise
        # Known failure modes: PRV's "Discrete mean differs significantly" for very
        # large ε (opacus#601) or delta too small for its float64 grid; GDP's root
        # bracket [0, 500]. The RDP bound is always a valid (looser) upper bound.
        logger.warning(
            "%s accountant failed (%s) on %d history entries; using the %s upper bound", accountant, exc, len(history), FALLBACK_ACCOUNTANT
        )
        return _cached_epsilon(FALLBACK_ACCOUNTANT, delta, history)
    return epsilon


def compute_epsilon(history: Iterable[GaussianSteps], *, accountant: str, delta: float) -> float:
    """ε at ``delta`` after composing every entry of ``history`` (0.0 when empty).

    A pure function of its arguments; results are memoised.
    """
    ACCOUNTANTS.get(accountant, key="privacy.accountant")
    key = tuple(entry.as_opacus() for entry in history)
    return _cached_epsilon(accountant, _check_delta(delta), key)


def _log_if_approximate(accountant: str) -> None:
    if accountant in APPROXIMATE_ACCOUNTANTS:
        logger.warning(
            "privacy.accountant = %r is a central-limit approximation (Dong et al. 2019): it can underestimate ε "
            "and is not an upper bound, especially for few steps; use 'prv' or 'rdp' for guarantees",
            accountant,
        )


class PrivacyLedger:
    """One party's composition history and the ε it has spent.

    The party is a client for DP-SGD (each of its examples is protected) or the
    whole federation for DP-FedAvg (each client is protected). The ledger only
    stores ``(noise_multiplier, sample_rate, steps)`` entries; ε is recomputed from
    them by a fresh Opacus accountant, so a ledger restored from JSON reports the
    identical ε.

    >>> ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    >>> ledger.record(noise_multiplier=1.1, sample_rate=0.01, steps=100)
    >>> ledger.epsilon() <= ledger.epsilon_if(noise_multiplier=1.1, sample_rate=0.01, steps=10)
    True
    """

    __slots__ = ("_accountant", "_delta", "_history")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, *, accountant: str, delta: float) -> None:
        ACCOUNTANTS.get(accountant, key="privacy.accountant")
        self._accountant = accountant
        self._delta = _check_delta(delta)
        self._history: tuple[GaussianSteps, ...] = ()
        _log_if_approximate(accountant)

    @property
    def accountant(self) -> str:
        return self._accountant

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def history(self) -> tuple[GaussianSteps, ...]:
        """The recorded entries, consecutive identical ``(z, q)`` merged."""
        return self._history

    @property
    def steps(self) -> int:
        """Total number of recorded steps."""
        return sum(entry.steps for entry in self._history)

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Append ``steps`` steps of the subsampled Gaussian mechanism with noise ``noise_multiplier`` at ``sample_rate``."""
        self._history = _append(self._history, GaussianSteps(noise_multiplier, sample_rate, steps))

    def epsilon(self) -> float:
        """ε spent so far at the ledger's δ (0.0 before anything is recorded)."""
        return compute_epsilon(self._history, accountant=self._accountant, delta=self._delta)

    def epsilon_if(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε the ledger would report after recording these steps; records nothing.

        Used to decide whether a party can afford another round before running it.
        """
        hypothetical = _append(self._history, GaussianSteps(noise_multiplier, sample_rate, steps))
        return compute_epsilon(hypothetical, accountant=self._accountant, delta=self._delta)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-serialisable state (floats round-trip exactly through :mod:`json`)."""
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "accountant": self._accountant,
            "delta": self._delta,
            "history": [{"noise_multiplier": e.noise_multiplier, "sample_rate": e.sample_rate, "steps": e.steps} for e in self._history],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrivacyLedger:
        """The ledger that :meth:`to_json` wrote; ValueError when ``data`` is not one."""
        if data.get("format") != LEDGER_FORMAT or data.get("version") != LEDGER_VERSION:
            raise ValueError(
                f"not a version-{LEDGER_VERSION} {LEDGER_FORMAT} record: format={data.get('format')!r}, version={data.get('version')!r}"
            )
        try:
            ledger = cls(accountant=data["accountant"], delta=data["delta"])
            ledger._history = tuple(GaussianSteps(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in data["history"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed privacy ledger: {exc!r}") from None
        return ledger

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyLedger):
            return NotImplemented
        return (self._accountant, self._delta, self._history) == (other._accountant, other._delta, other._history)

    def __repr__(self) -> str:
        return f"PrivacyLedger(accountant={self._accountant!r}, delta={self._delta!r}, steps={self.steps}, entries={len(self._history)})"


NODE_SPEND_KEY = "node_spend"
"""Key, in a client's DP entry (``state[mechanism.client_ledger_key]``), of what every run has spent on the same examples,
as a deployed node with ``state-dir`` recorded it before this answer (secure_ffm.flower.app.NodeSpend):
``{"other_runs": [steps...], "this_run": [steps...]}``, each step ``{noise_multiplier, sample_rate, steps}``. The
client's budget check composes it (:func:`budget_ledger`), so one target ε bounds every run on the node's data; the
ledger the client keeps and reports stays its own run's."""


def _spent_steps(entries: Any) -> list[GaussianSteps]:
    if not isinstance(entries, list | tuple):
        raise ValueError(f"malformed spend record {entries!r:.80}")
    out = []
    for spent in entries:
        try:
            z, q, steps = float(spent["noise_multiplier"]), float(spent["sample_rate"]), int(spent["steps"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"malformed spend record {spent!r:.80}") from None
        if not (finite_number(z) and z >= 0 and 0 < q <= 1 and steps > 0):
            raise ValueError(f"malformed spend record {spent!r:.80}")
        out.append(GaussianSteps(z, q, steps))
    return out


def budget_ledger(entry: Mapping[str, Any], own: PrivacyLedger) -> PrivacyLedger:
    """The ledger a client's budget check composes: its ``own`` run's, or, on a deployed node that recorded what its runs
    spent (:data:`NODE_SPEND_KEY`), every other run's recorded steps and then this run's, its own ledger or what the node
    recorded for it, whichever counts more steps (a run whose state file was lost, or whose id came back, restarted its
    ledger, not its spend). ValueError when the record is malformed."""
    spend = entry.get(NODE_SPEND_KEY)
    if not spend:
        return own
    if not isinstance(spend, Mapping):
        raise ValueError(f"malformed spend record {spend!r:.80}")
    ledger = PrivacyLedger(accountant=own.accountant, delta=own.delta)
    this_run = _spent_steps(spend.get("this_run", []))
    for step in [*_spent_steps(spend.get("other_runs", [])), *(this_run if sum(s.steps for s in this_run) > own.steps else own.history)]:
        ledger.record(noise_multiplier=step.noise_multiplier, sample_rate=step.sample_rate, steps=step.steps)
    return ledger


def rounds_that_fit(
    ledger: PrivacyLedger,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps_per_round: int,
    target_epsilon: float,
    limit: int,
    slack: float = 1e-9,
) -> int:
    """The most rounds (at most ``limit``) of ``steps_per_round`` steps the ledger can still take without ε passing the target.

    ε grows with every step, so a bisection over the number of rounds is exact.
    """

    def fits(rounds: int) -> bool:
        if rounds == 0:
            return ledger.epsilon() <= target_epsilon * (1 + slack)
        return ledger.epsilon_if(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=rounds * steps_per_round
        ) <= target_epsilon * (1 + slack)

    if fits(limit):
        return limit
    low, high = 0, limit  # fits(low) or low == 0; not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


# --------------------------------------------------------------------------- calibration


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (up to ``epsilon_tolerance``) that keeps ε within ``target_epsilon``.

    A search in the style of :func:`opacus.accountants.utils.get_noise_multiplier`,
    with four differences: the tolerance is relative (the result's ε lies in
    ``[(1 - epsilon_tolerance)·target, target]``, or as close below the target as the
    accountant's resolution allows); it starts from the CLT formula's answer (:func:`_clt_guess`)
    and takes secant steps on log ε over log z from there (:func:`_secant`: two or three
    accountant calls for DP-SGD clients, against four for the bracketing search alone);
    failing that it brackets geometrically (factors of 2) around the last point and
    narrows by false position, so it never evaluates far-off noise multipliers (small
    ones are slow and fragile for PRV); and the returned value is re-checked with the same accountant and the
    same code path :class:`PrivacyLedger` uses, so a ledger that records exactly
    ``(z, sample_rate, steps)`` never reports more than ``target_epsilon``.

    Raises :class:`ConfigError` naming ``privacy.target_epsilon`` when even
    ``MAX_NOISE_MULTIPLIER`` exceeds the budget (PRV, for one, never reports ε below
    its 0.01 error margin), and naming the offending key for invalid arguments.
    """
    target = _check_target_epsilon(target_epsilon, accountant)
    delta = _check_delta(delta)
    GaussianSteps(1.0, sample_rate, steps)  # validates sample_rate and steps
    if not finite_number(epsilon_tolerance) or not 0 < epsilon_tolerance < 1:
        raise ConfigError("privacy.epsilon_tolerance", f"must lie in (0, 1), got {epsilon_tolerance!r}", "use e.g. 0.01")
    ACCOUNTANTS.get(accountant, key="privacy.accountant")
    _log_if_approximate(accountant)

    def epsilon_at(z: float) -> float:
        return compute_epsilon((GaussianSteps(z, sample_rate, steps),), accountant=accountant, delta=delta)

    start = _clt_guess(target, delta=delta, sample_rate=sample_rate, steps=steps)
    slope = _rdp_slope([(sample_rate, steps)], delta=delta, z=start)
    where = f"over {steps} steps at sample rate {sample_rate:g}"
    return _solve(
        epsilon_at, target, start, epsilon_tolerance=epsilon_tolerance, accountant=accountant, delta=delta, where=where, slope=slope
    )


def calibrate_noise_multiplier_phases(
    *,
    target_epsilon: float,
    delta: float,
    phases: Sequence[tuple[float, int]],
    accountant: str = "prv",
    epsilon_tolerance: float = 0.01,
) -> float:
    """One noise multiplier for a sequence of ``(sample_rate, steps)`` phases, composed, that keeps ε within the
    target (as :func:`calibrate_noise_multiplier`, which is the one-phase case): a continual run's client, whose
    data size, hence sampling rate, changes from stage to stage while its ledger spans them all."""
    target = _check_target_epsilon(target_epsilon, accountant)
    delta = _check_delta(delta)
    if not phases:
        raise ValueError("calibrating noise for no steps")
    for q, t in phases:
        GaussianSteps(1.0, q, t)
    ACCOUNTANTS.get(accountant, key="privacy.accountant")
    _log_if_approximate(accountant)

    def epsilon_at(z: float) -> float:
        return compute_epsilon(tuple(GaussianSteps(z, q, t) for q, t in phases), accountant=accountant, delta=delta)

    # every phase's own multiplier is a lower bound of the composition's: start from the largest
    start = max(_clt_guess(target, delta=delta, sample_rate=q, steps=t) for q, t in phases)
    slope = _rdp_slope(phases, delta=delta, z=start)
    rates = [q for q, _ in phases]
    where = f"over {len(phases)} phases of {sum(t for _, t in phases)} steps at sample rates {min(rates):g}..{max(rates):g}"
    return _solve(
        epsilon_at, target, start, epsilon_tolerance=epsilon_tolerance, accountant=accountant, delta=delta, where=where, slope=slope
    )


def _solve(
    epsilon_at: Callable[[float], float],
    target: float,
    start: float,
    *,
    epsilon_tolerance: float,
    accountant: str,
    delta: float,
    where: str,
    slope: float,
) -> float:
    """The smallest z (up to the relative tolerance) with ε(z) <= target, searched around ``start``.

    First up to :data:`SECANT_STEPS` secant steps on log ε over log z from ``start`` (:func:`_secant`), the first
    with ``slope`` (RDP's, :func:`_rdp_slope`): from the CLT's guess the first or second step usually lands in
    the band, two or three accountant calls in all. Failing that, false position below from the points it tried when
    they straddle the target, else from a geometric bracket around them."""
    floor = (1.0 - epsilon_tolerance) * target
    found, tried = _secant(epsilon_at, target, floor, start, slope)
    if found is not None:
        return _verified(found, epsilon_at, target)
    above = [z for z, eps in tried.items() if eps > target]
    below = [z for z, eps in tried.items() if eps <= target]
    if above and below and max(above) < min(below):  # the secant's points straddle the target: narrow them
        low, high = max(above), min(below)
    else:
        low, high = _bracket(
            epsilon_at, target, min(below) if below else max(above, default=start), accountant=accountant, where=where, delta=delta
        )
    eps_high = epsilon_at(high)
    # Illinois false position on g(z) = log ε(z) - aim over log z (aim inside the band, as the secant's), which is
    # nearly linear, so it needs 3-5 accountant calls where bisection needs about 10 (PRV calls cost up to a second
    # each); it bisects while the bracket's low end is 0 or ε there is infinite.
    eps_low = epsilon_at(low) if low > 0 else math.inf
    aim = _log_aim(target, floor)
    g_low = math.log(eps_low) - aim if low > 0 and 0 < eps_low < math.inf else None
    g_high = math.log(eps_high) - aim if eps_high > 0 else None
    replaced = ""
    while eps_high < floor and high - low > 1e-6 * high:
        if g_low is not None and g_high is not None and g_low != g_high:
            x_low, x_high = math.log(low), math.log(high)
            x = x_high - g_high * (x_high - x_low) / (g_high - g_low)
            margin = 0.01 * (x_high - x_low)
            mid = math.exp(min(max(x, x_low + margin), x_high - margin))
        else:
            mid = 0.5 * (low + high)
        eps_mid = epsilon_at(mid)
        g_mid = math.log(eps_mid) - aim if 0 < eps_mid < math.inf else None
        if eps_mid <= target:
            high, eps_high, g_high = mid, eps_mid, g_mid
            if replaced == "high" and g_low is not None:
                g_low *= 0.5  # Illinois: the low end was kept twice, halve its weight
            replaced = "high"
        else:
            low, eps_low, g_low = mid, eps_mid, g_mid
            if replaced == "low" and g_high is not None:
                g_high *= 0.5
            replaced = "low"
    if eps_high < floor:
        logger.debug("ε(z) jumps across [%g, %g] near z=%g; returning ε=%g", floor, target, high, eps_high)
    return _verified(high, epsilon_at, target)


def _clt_guess(target: float, *, delta: float, sample_rate: float, steps: int) -> float:
    """A starting noise multiplier from the (instant) CLT formula, clamped to ``[1/64, MAX_NOISE_MULTIPLIER]``.

    Only a starting point: the search then brackets the real accountant's answer
    around it, so the search never probes far-off multipliers (small ones make PRV
    slow: about 6 s for z = 1, q = 1, 1000 steps).

    In closed form but for one root: μ-GDP gives ε at δ through the dual
    ``δ(ε; μ) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)`` (Dong, Roth & Su 2019, Corollary 2.13), increasing in μ, so
    the μ that spends exactly the target is one root in μ; Poisson-subsampled DP-SGD is μ-GDP with
    ``μ = q sqrt(T (e^{1/z²} - 1))`` (Bu et al. 2020, Opacus' ``compute_mu_poisson``), which gives z.
    (It used to bisect z 40 times, each with a root search for ε: 58 ms a client; now about 2 ms.)
    """
    from scipy import optimize

    def excess_delta(mu: float) -> float:
        with np.errstate(all="ignore"):
            value = float(gdp_analysis.delta_eps_mu(eps=target, mu=mu))
        return (1.0 if math.isnan(value) else value) - delta  # e^ε overflowed: ε is far below this μ's

    low_mu, high_mu = 1e-12, 1e3
    if excess_delta(low_mu) >= 0:
        return MAX_NOISE_MULTIPLIER
    if excess_delta(high_mu) <= 0:
        return _MIN_START
    mu = optimize.brentq(excess_delta, low_mu, high_mu, xtol=1e-15, rtol=1e-14)
    ratio = mu / (sample_rate * math.sqrt(steps))  # sqrt(e^{1/z²} - 1)
    z = 1.0 / math.sqrt(math.log1p(ratio * ratio)) if ratio > 0 else MAX_NOISE_MULTIPLIER
    return min(max(z, _MIN_START), MAX_NOISE_MULTIPLIER)


SECANT_STEPS = 3
"""Accountant calls :func:`_secant` makes before the bracketing search takes over."""

SECANT_AIM = 0.25
"""Where in the band ``[floor, target]`` the secant steps aim, as a fraction of its width (in log ε) below the
target: near the target, so the calibrated z spends nearly all of the budget, with room for a step's error."""


def _log_aim(target: float, floor: float) -> float:
    """log ε the search aims at: :data:`SECANT_AIM` of the band ``[floor, target]``'s width (in log ε) below the target."""
    return math.log(target) + SECANT_AIM * (math.log(floor) - math.log(target))


def _secant(
    epsilon_at: Callable[[float], float], target: float, floor: float, start: float, slope: float
) -> tuple[float | None, dict[float, float]]:
    """``(z, tried)``: a z with ``floor <= ε(z) <= target`` found by secant steps on ``log ε`` over ``log z`` aimed
    near the target (:data:`SECANT_AIM`), or None after :data:`SECANT_STEPS` calls (or a step that cannot be taken: ε
    infinite or zero, a slope that is not negative); ``tried`` maps each z evaluated to its ε, from which the search
    that takes over starts.

    ``log ε`` is nearly linear in ``log z`` (slope about -1 to -3), so from the CLT's guess, typically within 10% of
    the answer, one step with RDP's slope lands within about 0.6% of its aim. Once the points tried straddle the
    target, each step stays strictly inside them (a safeguarded secant)."""
    aim = _log_aim(target, floor)
    x, previous = math.log(start), None
    lowest, highest = math.log(_MIN_START), math.log(MAX_NOISE_MULTIPLIER)
    low, high = lowest, highest  # log z known to spend more than / at most the target
    tried: dict[float, float] = {}
    for _ in range(SECANT_STEPS):
        z = math.exp(x)
        eps = tried[z] = epsilon_at(z)
        if floor <= eps <= target:
            return z, tried
        if not 0 < eps < math.inf:
            break
        if eps > target:
            low = max(low, x)
        else:
            high = min(high, x)
        g = math.log(eps)
        if previous is not None and g != previous[1] and x != previous[0]:
            slope = (g - previous[1]) / (x - previous[0])
        if not slope < 0:
            break
        previous = (x, g)
        x = x + (aim - g) / slope
        if straddled := low > lowest and high < highest:  # stay strictly inside the points that straddle the target
            margin = 0.01 * (high - low)
            x = min(max(x, low + margin), high - margin)
        x = min(max(x, lowest), highest)
        if x == previous[0] or not straddled and x in (lowest, highest):  # no step left: the search below takes over
            break
    return None, tried


def _rdp_slope(phases: Sequence[tuple[float, int]], *, delta: float, z: float) -> float:
    """d log ε / d log z of the RDP bound of ``phases`` (``(sample_rate, steps)``, composed) at ``z``, a central
    difference over ±1% in z; -1 where RDP gives no finite positive ε there.

    The first secant step's slope. RDP's is the closer to PRV's: at the CLT's guess for Fashion-MNIST clients at ε = 3
    it was -2.68 against PRV's -2.57 (the CLT's own: -2.24), and at ε = 8 with 30 steps -2.12 against -2.54 (the
    CLT's: -7.94, which sent the first step nowhere near the band). A few milliseconds with the vectorized RDP."""

    def log_epsilon(at: float) -> float:
        accountant = RDPAccountant()  # directly, not through the memo: probes, not calibrations, and not counted as them
        accountant.history = [(at, q, steps) for q, steps in phases]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus warns when the best order is an end of its grid
                eps = float(accountant.get_epsilon(delta=delta))
        except (ArithmeticError, ValueError):
            return math.nan
        return math.log(eps) if 0 < eps < math.inf else math.nan

    step = 0.01
    slope = (log_epsilon(z * math.exp(step)) - log_epsilon(z * math.exp(-step))) / (2 * step)
    return slope if slope < 0 else -1.0


def _bracket(
    epsilon_at: Callable[[float], float], target: float, start: float, *, accountant: str, where: str, delta: float
) -> tuple[float, float]:
    """``(low, high)`` with ε(high) <= target < ε(low) (``low`` may be 0) and high <= 2·low, searched outwards from ``start``."""
    high = start
    if epsilon_at(high) > target:
        while True:
            if high >= MAX_NOISE_MULTIPLIER:
                raise ConfigError(
                    "privacy.target_epsilon",
                    f"ε = {target:g} at δ = {delta:g} cannot be met with the {accountant} accountant "
                    f"{where}: "
                    f"even noise multiplier {MAX_NOISE_MULTIPLIER:g} gives ε = {epsilon_at(MAX_NOISE_MULTIPLIER):.4g}",
                    "raise privacy.target_epsilon or lower the number of rounds/steps (or the sample rate)",
                )
            low, high = high, min(2.0 * high, MAX_NOISE_MULTIPLIER)
            if epsilon_at(high) <= target:
                return low, high
    low = 0.5 * high
    while low > _MIN_START and epsilon_at(low) <= target:
        high, low = low, 0.5 * low
    return (low if epsilon_at(low) > target else 0.0), high


def _verified(z: float, epsilon_at: Callable[[float], float], target: float) -> float:
    """``z`` nudged upwards until ε(z) <= target (a guard; the search already ensures it)."""
    for _ in range(100):
        if epsilon_at(z) <= target:
            return z
        logger.warning("calibrated noise multiplier %g gives ε=%g > %g; increasing it", z, epsilon_at(z), target)
        z *= 1.001
    raise RuntimeError(f"could not verify a noise multiplier for ε <= {target}")


# --------------------------------------------------------------------------- δ


def default_delta(num_examples: int) -> float:
    """δ = 1 / (10·n) for ``n`` protected units (examples for DP-SGD, clients for DP-FedAvg).

    (ε, δ)-DP allows a mechanism to publish each unit's data outright with
    probability δ, so δ must be well below 1/n: with δ = 1/n one unit is fully
    exposed in expectation (Dwork & Roth, "The Algorithmic Foundations of
    Differential Privacy", 2014, §2.3). δ = 1/(10·n) bounds that expected number of
    exposed units by 0.1; the same order of magnitude as the common δ = 1/n^1.1 for
    n between 10^4 and 10^10 and as Opacus' tutorials (δ = 10^-5 for CIFAR-10's
    50 000 images, i.e. 1/(2n)).
    """
    n = _check_num_examples(num_examples)
    return 1.0 / (10.0 * n)


def check_delta(delta: float, num_examples: int) -> str | None:
    """Why ``delta`` is too large for ``num_examples`` protected units, or None when δ < 1/n."""
    delta = _check_delta(delta)
    n = _check_num_examples(num_examples)
    if delta >= 1.0 / n:
        return (
            f"δ = {delta:g} is not below 1/n = {1.0 / n:g} for n = {n} protected units: "
            f"about {delta * n:.2g} of them may be exposed outright; use δ <= {default_delta(n):g}"
        )
    return None


# --------------------------------------------------------------------------- DP-FedAvg


def dp_fedavg_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """User-level ε of DP-FedAvg after ``rounds`` rounds
    (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018).

    Each round is one step of the subsampled Gaussian mechanism whose unit is a
    whole client: ``sample_rate = clients_per_round / num_clients`` and
    ``noise_multiplier`` = (standard deviation of the noise added to the sum of
    clipped client updates) / (per-client clip norm). The accountants assume Poisson
    sampling of clients, as McMahan et al. do; sampling exactly ``clients_per_round``
    clients without replacement is commonly accounted the same way, but that is an
    approximation, not a theorem. ``delta`` should be below 1/num_clients
    (:func:`default_delta`). Equivalent to a :class:`PrivacyLedger` recording
    ``rounds`` steps.
    """
    rounds = _check_steps(rounds, "server.rounds")
    ledger = PrivacyLedger(accountant=accountant, delta=delta)
    ledger.record(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=rounds)
    return ledger.epsilon()
