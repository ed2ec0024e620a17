"""The vectorized RDP of the sampled Gaussian mechanism against Opacus' term-by-term sums and its definition by quadrature,
the accountants built on it, and the calibration search's number of accountant calls."""

import functools
import math
import warnings

import mpmath
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant as OpacusPRVAccountant
from opacus.accountants import RDPAccountant as OpacusRDPAccountant
from opacus.accountants.analysis import gdp as gdp_analysis
from opacus.accountants.analysis import rdp as opacus_rdp

import secure_ffm.privacy.accounting as accounting
from secure_ffm.privacy.sampled_gaussian import DEFAULT_ORDERS, PRVAccountant, RDPAccountant, sampled_gaussian_rdp


def opacus_curve(q, z, orders=DEFAULT_ORDERS):
    return np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(orders)))


def exact_rdp(q, sigma, alpha):
    """From the definition rather than the series: ``A_α = E_{x ~ N(0, σ²)} [(1 - q + q e^{(2x - 1) / (2σ²)})^α]``,
    the α-th moment of the likelihood ratio of ``(1 - q) N(0, σ²) + q N(1, σ²)`` to ``N(0, σ²)`` (Mironov, Talwar &
    Zhang 2019, section 3.3), by 40-digit quadrature."""
    with mpmath.workdps(40):
        q, sigma, alpha = mpmath.mpf(q), mpmath.mpf(sigma), mpmath.mpf(alpha)

        def integrand(x):
            return mpmath.npdf(x, 0, sigma) * (1 - q + q * mpmath.exp((2 * x - 1) / (2 * sigma**2))) ** alpha

        moment = mpmath.quad(integrand, [-mpmath.inf, -10 * sigma, 0, 1, 10 * sigma + alpha, mpmath.inf])
        return float(mpmath.log(moment) / (alpha - 1))


@settings(max_examples=25, deadline=None)
@given(q=st.floats(1e-4, 0.5), z=st.floats(0.4, 20.0))
@example(q=0.5, z=19.5)
def test_rdp_curve_agrees_with_opacus(q, z):
    # Opacus sums each order's series term by term in Python; the difference is rounding, and both sums stop at the
    # first term below e^-30 (9.4e-14) in A_α, which leaves each RDP value off by up to about that over α - 1 (1e-12 at
    # α = 1.1). At q = 0.5, z = 19.5, α = 1.1 the two differ by 1.4e-12 (3.8e-9 relative), and this curve is the closer
    # to the definition (2.6e-9 against Opacus' 6.3e-9, quadrature below); 400 random (q, z) stayed within 1e-12
    np.testing.assert_allclose(sampled_gaussian_rdp(sample_rate=q, noise_multiplier=z), opacus_curve(q, z), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("alpha", [2.0, 12.0, 63.0])
@pytest.mark.parametrize(("q", "z"), [(0.01, 0.9), (0.2, 1.5), (0.9, 0.6)])
def test_integer_orders_agree_with_opacus(q, z, alpha):
    assert sampled_gaussian_rdp(sample_rate=q, noise_multiplier=z, orders=[alpha])[0] == pytest.approx(
        opacus_curve(q, z, [alpha])[0], rel=1e-12
    )


@pytest.mark.parametrize(
    ("q", "z", "alpha", "rel"),
    [
        # at small q and small α the RDP is tiny (6e-11 for the first case): the series' stopping rule (a term below
        # e^-30, Opacus') then bounds the accuracy; Opacus' own values are off by 1e-4 and 1.4e-6 there
        (1e-4, 10.0, 1.2, 2e-5),
        (1e-4, 1.0, 1.1, 1e-6),
        (0.0078, 10.0, 1.1, 1e-8),
        (0.0117, 0.9, 3.7, 1e-9),
        (0.3, 1.0, 1.1, 1e-9),  # 3,747 terms before both halves fall below e^-30 (seven chunks)
        (0.05, 0.6, 10.9, 1e-12),
        (0.9, 0.6, 63.0, 1e-12),
        (0.5, 19.5, 1.1, 5e-9),  # where it differs most from Opacus' (above): 2.6e-9 from the definition, Opacus 6.3e-9
    ],
)
def test_rdp_matches_the_definition_by_quadrature(q, z, alpha, rel):
    assert sampled_gaussian_rdp(sample_rate=q, noise_multiplier=z, orders=[alpha])[0] == pytest.approx(exact_rdp(q, z, alpha), rel=rel)


def test_special_cases_follow_opacus():
    orders = [1.5, 2.0, 10.0]
    assert sampled_gaussian_rdp(sample_rate=0.0, noise_multiplier=1.0, orders=orders).tolist() == [0.0, 0.0, 0.0]
    assert sampled_gaussian_rdp(sample_rate=0.1, noise_multiplier=0.0, orders=orders).tolist() == [math.inf] * 3
    np.testing.assert_array_equal(sampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=2.0, orders=orders), np.array(orders) / 8)
    assert sampled_gaussian_rdp(sample_rate=0.1, noise_multiplier=1.0, orders=[math.inf])[0] == math.inf


def test_curves_are_memoised_and_read_only():
    first = sampled_gaussian_rdp(sample_rate=0.02, noise_multiplier=1.1)
    assert sampled_gaussian_rdp(sample_rate=0.02, noise_multiplier=1.1) is first
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 0.0


HISTORIES = [
    ([(1.5, 0.04, 2249)], 1e-5),
    ([(0.85, 0.0078, 2560)], 2.4e-5),
    ([(1.0, 0.01, 100), (2.0, 0.02, 50)], 1e-5),
    ([(0.6, 0.3, 30)], 1e-5),
    ([(5.0, 1.0, 100)], 1e-6),
]


@pytest.mark.parametrize(("history", "delta"), HISTORIES)
def test_prv_epsilon_is_opacus_bitwise(history, delta):
    # the RDP only sizes PRV's domain, which is rounded to the mesh: the same domain, the same ε
    ours, theirs = PRVAccountant(), OpacusPRVAccountant()
    ours.history, theirs.history = list(history), list(history)
    assert ours.get_epsilon(delta=delta) == theirs.get_epsilon(delta=delta)


@pytest.mark.parametrize(("history", "delta"), HISTORIES)
def test_rdp_epsilon_agrees_with_opacus(history, delta):
    ours, theirs = RDPAccountant(), OpacusRDPAccountant()
    ours.history, theirs.history = list(history), list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns when the best order is an end of its grid; both do
        assert ours.get_privacy_spent(delta=delta) == pytest.approx(theirs.get_privacy_spent(delta=delta), rel=1e-10)


def test_empty_history_spends_nothing():
    assert RDPAccountant().get_privacy_spent(delta=1e-5) == (0, 0)


# --------------------------------------------------------------------------- the calibration search


@pytest.mark.parametrize(
    ("target", "delta", "q", "steps"),
    [(3.0, 2.4e-5, 0.0078, 2560), (3.0, 1e-4, 0.04, 1000), (1.0, 1e-5, 0.01, 3000), (8.0, 1e-5, 0.25, 200)],
)
def test_clt_guess_spends_exactly_the_target_under_the_clt(target, delta, q, steps):
    z = accounting._clt_guess(target, delta=delta, sample_rate=q, steps=steps)
    mu = gdp_analysis.compute_mu_poisson(steps=steps, noise_multiplier=z, sample_rate=q)
    assert gdp_analysis.eps_from_mu(mu=mu, delta=delta) == pytest.approx(target, rel=1e-7)


def test_clt_guess_of_a_budget_no_noise_spends_is_the_smallest_start():
    # one step at q = 1e-4 spends almost nothing: the bisection this replaced answered MAX_NOISE_MULTIPLIER there
    # (the CLT's root search failed at ε = 0 and was read as an infinite ε)
    assert accounting._clt_guess(3.0, delta=1e-5, sample_rate=1e-4, steps=1) < 1.0


@pytest.fixture
def accountant_calls(monkeypatch):
    calls = []
    uncached = accounting._cached_epsilon.__wrapped__

    def counted(accountant, delta, history):
        calls.append(history)
        return uncached(accountant, delta, history)

    monkeypatch.setattr(accounting, "_cached_epsilon", functools.lru_cache(maxsize=None)(counted))
    return calls


@pytest.mark.parametrize(
    ("target", "n", "q", "steps"),
    [
        # DP-SGD clients of the Fashion-MNIST configs (batch 32, ε = 3): the Illinois search alone took four calls
        (3.0, 4099, 32 / 4099, 2560),
        (3.0, 2062, 32 / 2062, 1280),
        (3.0, 800, 32 / 800, 500),
        (3.0, 100, 32 / 100, 60),
        (3.0, 20000, 32 / 20000, 16000),
        # few steps at a large ε, where the CLT's own slope (-7.9 against PRV's -2.5) sent the first step astray
        (8.0, 60000, 0.01, 30),
        (8.0, 1000, 0.1, 3),
    ],
)
def test_calibration_takes_at_most_three_accountant_calls(accountant_calls, target, n, q, steps):
    delta = 1 / (10 * n)
    z = accounting.calibrate_noise_multiplier(target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant="prv")
    assert len(accountant_calls) <= 3
    epsilon = accounting.compute_epsilon((accounting.GaussianSteps(z, q, steps),), accountant="prv", delta=delta)
    assert 0.99 * target <= epsilon <= target


def test_calibration_falls_back_to_the_bracketing_search(accountant_calls, monkeypatch):
    # a secant that never gets a step (SECANT_STEPS = 0) leaves the whole search to the bracketing: same band
    monkeypatch.setattr(accounting, "SECANT_STEPS", 0)
    z = accounting.calibrate_noise_multiplier(target_epsilon=3.0, delta=2.4e-5, sample_rate=0.0078, steps=2560, accountant="prv")
    assert len(accountant_calls) >= 3
    epsilon = accounting.compute_epsilon((accounting.GaussianSteps(z, 0.0078, 2560),), accountant="prv", delta=2.4e-5)
    assert 0.99 * 3.0 <= epsilon <= 3.0
