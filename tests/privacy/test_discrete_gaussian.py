import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy import stats

from secure_ffm.privacy.discrete_gaussian import (
    DDG_ORDERS,
    conditional_randomized_rounding,
    ddg_epsilon,
    ddg_rdp,
    rounded_norm_bound,
    sample_discrete_gaussian,
    subsampled_rdp,
)
from secure_ffm.privacy.noise import FastStream, NoiseStream, derive_key


def stream(seed: int) -> FastStream:
    return FastStream(derive_key(bytes(32), seed))


class UniformsOnly(NoiseStream):
    """A stream that refuses Gaussian draws: the DDG core must only use uniforms."""

    def __init__(self, seed: int) -> None:
        self.inner = stream(seed)

    def random(self, size: int) -> np.ndarray:
        return self.inner.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        raise AssertionError("normal() must not be used")

    def normal_float32(self, count: int, std: float):
        raise AssertionError("normal_float32() must not be used")


def discrete_gaussian_pmf(support: np.ndarray, variance: float) -> np.ndarray:
    radius = int(40 * math.sqrt(variance)) + 10
    all_values = np.arange(-radius, radius + 1)
    weights = np.exp(-(all_values.astype(float) ** 2) / (2 * variance))
    return np.exp(-(support.astype(float) ** 2) / (2 * variance)) / weights.sum()


def chi_square_p_value(samples: np.ndarray, variance: float) -> float:
    """Chi-square goodness of fit of integer samples to N_Z(0, variance), with bins of expected count >= 5."""
    n = samples.size
    radius = int(8 * math.sqrt(variance)) + 2
    support = np.arange(-radius, radius + 1)
    expected = n * discrete_gaussian_pmf(support, variance)
    keep = expected >= 5
    support, expected = support[keep], expected[keep]
    observed = np.array([(samples == v).sum() for v in support], dtype=float)
    # lump everything outside the kept bins into one tail bin
    observed = np.append(observed, n - observed.sum())
    expected = np.append(expected, n - expected.sum())
    if expected[-1] < 5:
        observed[-2] += observed[-1]
        expected[-2] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    return float(stats.chisquare(observed, expected).pvalue)


# --------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 20.0])
def test_sampler_matches_the_discrete_gaussian_pmf(sigma):
    samples = sample_discrete_gaussian(100_000, sigma=sigma, stream=stream(1))
    assert samples.dtype == np.int64
    assert chi_square_p_value(samples, sigma**2) > 1e-3


@pytest.mark.parametrize("sigma", [2.0, 10.0, 1000.0])
def test_sampler_has_mean_zero_and_variance_sigma_squared(sigma):
    n = 200_000
    samples = sample_discrete_gaussian(n, sigma=sigma, stream=stream(2)).astype(float)
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(samples.var() / sigma**2 - 1) < 5 * math.sqrt(2 / n)


def test_sum_of_shares_is_the_discrete_gaussian_of_the_summed_variance():
    n, sigma = 5, 3.0
    total = sum(sample_discrete_gaussian(100_000, sigma=sigma, stream=stream(10 + i)) for i in range(n))
    assert abs(total.var() / (n * sigma**2) - 1) < 5 * math.sqrt(2 / total.size)
    assert chi_square_p_value(total, n * sigma**2) > 1e-3


def test_sampler_with_sigma_zero_returns_zeros():
    np.testing.assert_array_equal(sample_discrete_gaussian(7, sigma=0.0, stream=stream(3)), np.zeros(7, np.int64))


def test_sampler_uses_only_uniforms_of_the_stream():
    first = sample_discrete_gaussian(1000, sigma=4.0, stream=UniformsOnly(4))
    again = sample_discrete_gaussian(1000, sigma=4.0, stream=UniformsOnly(4))
    np.testing.assert_array_equal(first, again)


# --------------------------------------------------------------------------- flattening


# --------------------------------------------------------------------------- rounding


def test_rounded_norm_bound_follows_the_conditional_rounding_formula():
    a, d, beta = 100.0, 64, math.exp(-0.5)
    expected = math.sqrt(a**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (a + math.sqrt(d) / 2))
    assert rounded_norm_bound(norm=1.0, granularity=0.01, dim=d, beta=beta) == pytest.approx(expected, rel=1e-12)
    assert rounded_norm_bound(norm=1.0, granularity=0.01, dim=d, beta=0.0) == pytest.approx(a + 8.0, rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 50)), elements=st.floats(-1.0, 1.0)), st.floats(0.01, 1.0))
def test_conditional_rounding_never_exceeds_the_bound(direction, granularity):
    norms = np.linalg.norm(direction, axis=1, keepdims=True)
    rows = np.where(norms > 1.0, direction / np.maximum(norms, 1e-300), direction) / granularity  # norm <= 1/γ
    bound = rounded_norm_bound(norm=1.0, granularity=granularity, dim=rows.shape[1], beta=math.exp(-0.5))
    rounded = conditional_randomized_rounding(rows, norm_bound=bound, stream=stream(5))
    assert rounded.dtype == np.int64
    assert np.all(np.linalg.norm(rounded, axis=1) <= bound)
    assert np.all(np.abs(rounded - rows) < 1)


def test_randomized_rounding_is_unbiased():
    x = np.array([0.3, -1.7, 2.5, 0.0, 4.9])
    draws = conditional_randomized_rounding(np.tile(x, (40_000, 1)), norm_bound=1e6, stream=stream(6))
    standard_error = 0.5 / math.sqrt(draws.shape[0])
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - x), 5 * standard_error)


class FixedWords(NoiseStream):
    """Randomized rounding's coins from a list: checks the threshold a word is compared with."""

    def __init__(self, words: list[int]) -> None:
        self.words = np.array(words, dtype=np.uint32)

    def uniform_words32(self, count: int) -> np.ndarray:
        out, self.words = self.words[:count], self.words[count:]
        return out

    def random(self, size: int) -> np.ndarray:
        raise AssertionError("rounding draws 32-bit words, not float64 uniforms")

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        raise AssertionError("normal() must not be used")

    def normal_float32(self, count: int, std: float):
        raise AssertionError("normal_float32() must not be used")


def test_a_coordinate_rounds_up_when_its_word_is_below_the_fraction_times_two_to_the_32():
    # fractions 0.25, 0.75 and 0: thresholds 2^30, 3 * 2^30 and 0 (a whole number never rounds up)
    x = np.array([2.25, -0.25, 7.0, 2.25, -0.25, 7.0])
    words = [2**30 - 1, 3 * 2**30 - 1, 0, 2**30, 3 * 2**30, 2**32 - 1]
    rounded = conditional_randomized_rounding(x, norm_bound=100.0, stream=FixedWords(words))
    np.testing.assert_array_equal(rounded, [3, 0, 7, 2, -1, 7])


def test_a_tiny_negative_coordinate_rounds_to_zero():
    # v - floor(v) is 1.0 in float64 for v = -1e-300: v counts as 0, which rounding leaves alone
    rounded = conditional_randomized_rounding(np.full(1000, -1e-300), norm_bound=1e6, stream=stream(8))
    np.testing.assert_array_equal(rounded, 0)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 40)), elements=st.floats(-(2.0**19) + 1, 2.0**19 - 1)))
@example(rows=np.array([[-2.59327766e-14, 3.0 - 2.0**-40, -7.5]]))
def test_the_fixed_point_split_gives_the_float_splits_integers_and_thresholds(rows):
    from secure_ffm.privacy.discrete_gaussian import FIXED_POINT_MAX, _split_rows

    assert np.abs(rows).max() < FIXED_POINT_MAX
    base, threshold = _split_rows(rows)
    assert base.dtype == np.int64  # the fixed-point path
    float_base, float_threshold = _split_rows(np.concatenate([rows, np.full((rows.shape[0], 1), FIXED_POINT_MAX)], axis=1))
    assert float_base.dtype == np.float64  # one coordinate at the limit: the float64 path
    # each split's value in units of 2^-32, base 2^32 + threshold: v 2^32 truncated toward zero against floor(v) and the
    # floor of the scaled fraction, at most one unit apart (v = -2.6e-14 is 0 + 0 in fixed point, -1 + (2^32 - 1) in float)
    fixed_units = base * 2**32 + threshold.astype(np.int64)
    float_units = float_base[:, :-1].astype(np.int64) * 2**32 + float_threshold[:, :-1].astype(np.int64)
    assert np.abs(fixed_units - float_units).max(initial=0) <= 1


def test_rounding_beyond_the_fixed_point_range_is_unbiased_too():
    x = np.array([1e6 + 0.3, -3e7 - 0.75, 2.0**40 + 0.5])
    draws = conditional_randomized_rounding(np.tile(x, (40_000, 1)), norm_bound=1e13, stream=stream(9))
    ups = draws - np.floor(x).astype(np.int64)  # (a mean of 40,000 values near 2^40 would lose the fraction in float64)
    assert set(np.unique(ups)) <= {0, 1}
    np.testing.assert_array_less(np.abs(ups.mean(axis=0) - (x - np.floor(x))), 5 * 0.5 / math.sqrt(draws.shape[0]))


def test_rounding_reports_an_unreachable_bound():
    with pytest.raises(ValueError, match="after 20 tries"):
        conditional_randomized_rounding(np.full(10, 3.5), norm_bound=1.0, stream=stream(7), max_tries=20)


# --------------------------------------------------------------------------- accounting


ORDERS = np.arange(2, 129)


def test_ddg_rdp_equals_the_gaussian_mechanism_for_large_sigma():
    sigma, n, l2, d = 50.0, 10, 30.0, 1000  # τ = 10·Σ exp(-2π²σ²k/(k+1)) underflows to 0
    gaussian = ORDERS * l2**2 / (2 * n * sigma**2)
    np.testing.assert_allclose(ddg_rdp(ORDERS, sigma=sigma, num_clients=n, l2_sensitivity=l2, dim=d), gaussian, rtol=1e-9)


def test_ddg_rdp_decreases_to_the_gaussian_mechanism_as_tau_vanishes():
    n, d, ratio = 20, 10_000, 2.0  # sensitivity scaled with σ so the Gaussian part is fixed
    gaussian = ORDERS * ratio**2 / (2 * n)
    gaps = [ddg_rdp(ORDERS, sigma=s, num_clients=n, l2_sensitivity=ratio * s, dim=d) - gaussian for s in (0.5, 0.6, 0.8, 1.0, 2.0)]
    assert all(np.all(gap >= 0) for gap in gaps)
    assert all(np.all(later <= earlier) for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert np.max(gaps[-1] / gaussian) < 1e-9


def test_ddg_rdp_with_one_share_is_the_discrete_gaussian_bound():
    # n = 1: τ = 0, the discrete Gaussian's RDP equals the Gaussian's (Canonne, Kamath & Steinke 2020)
    np.testing.assert_allclose(ddg_rdp(ORDERS, sigma=0.7, num_clients=1, l2_sensitivity=2.0, dim=5), ORDERS * 4.0 / (2 * 0.49))


def test_ddg_rdp_below_half_is_infinite():
    assert np.all(np.isinf(ddg_rdp(ORDERS, sigma=0.4, num_clients=3, l2_sensitivity=1.0, dim=3)))


def test_ddg_rdp_l1_sensitivity_tightens_the_bound():
    kwargs = dict(sigma=0.7, num_clients=50, l2_sensitivity=10.0, dim=10_000)
    assert np.all(ddg_rdp(ORDERS, **kwargs, l1_sensitivity=10.0) <= ddg_rdp(ORDERS, **kwargs, l1_sensitivity=1000.0))


@pytest.mark.parametrize("sigma", [10.0, 30.0])
@pytest.mark.parametrize(("n", "l2", "steps"), [(8, 10.0, 10), (4, 20.0, 1)])
def test_ddg_epsilon_without_sampling_is_at_least_the_continuous_gaussian_at_the_same_orders(sigma, n, l2, steps):
    z = math.sqrt(n) * sigma / l2
    eps = ddg_epsilon(sigma=sigma, num_clients=n, l2_sensitivity=l2, dim=512, steps=steps, sample_rate=1.0, delta=1e-5)
    orders = np.asarray(DDG_ORDERS, dtype=float)
    gaussian, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=1.0, noise_multiplier=z, steps=steps, orders=orders), delta=1e-5)
    assert gaussian * (1 - 1e-12) <= eps <= 1.03 * gaussian


@pytest.mark.parametrize("sigma", [10.0, 30.0])
@pytest.mark.parametrize(("n", "l2", "steps"), [(8, 10.0, 10), (4, 20.0, 1)])
def test_ddg_epsilon_without_sampling_is_within_three_percent_of_opacus_rdp_gaussian(sigma, n, l2, steps):
    z = math.sqrt(n) * sigma / l2
    eps = ddg_epsilon(sigma=sigma, num_clients=n, l2_sensitivity=l2, dim=512, steps=steps, sample_rate=1.0, delta=1e-5)
    accountant = RDPAccountant()  # Opacus' default orders (fractional, up to 63)
    accountant.history = [(z, 1.0, steps)]
    assert eps == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=0.03)


def test_ddg_epsilon_with_small_sigma_exceeds_the_continuous_gaussian():
    n, sigma, l2, d, steps, delta = 100, 0.6, 2.0, 4096, 10, 1e-5
    z = math.sqrt(n) * sigma / l2
    eps = ddg_epsilon(sigma=sigma, num_clients=n, l2_sensitivity=l2, dim=d, steps=steps, sample_rate=1.0, delta=delta)
    orders = np.asarray(DDG_ORDERS, dtype=float)
    gaussian, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=1.0, noise_multiplier=z, steps=steps, orders=orders), delta=delta)
    assert eps > 1.05 * gaussian


@pytest.mark.parametrize(("q", "z"), [(0.01, 1.0), (0.1, 2.0), (0.5, 0.8), (0.001, 5.0)])
def test_subsampled_rdp_bounds_the_exact_sampled_gaussian_from_above(q, z):
    exact = compute_rdp(q=q, noise_multiplier=z, steps=1, orders=ORDERS.astype(float))
    bound = subsampled_rdp(ORDERS, lambda a: a / (2 * z**2), sample_rate=q)
    assert np.all(bound >= exact * (1 - 1e-9))
    assert np.all(bound <= 4 * exact + 1e-12)


def test_subsampled_rdp_at_rate_one_is_unchanged():
    rdp = ORDERS / 3.0
    np.testing.assert_array_equal(subsampled_rdp(ORDERS, rdp, sample_rate=1.0), rdp)


def test_subsampled_rdp_accepts_an_array_of_consecutive_orders():
    rdp = ORDERS / 3.0
    np.testing.assert_allclose(subsampled_rdp(ORDERS, rdp, sample_rate=0.05), subsampled_rdp(ORDERS, lambda a: a / 3.0, sample_rate=0.05))
    with pytest.raises(ValueError, match="every integer order"):
        subsampled_rdp(np.array([2, 4]), np.array([1.0, 2.0]), sample_rate=0.05)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.5, 100.0), st.integers(1, 1000), st.floats(0.1, 1e3), st.integers(1, 10**6))
def test_ddg_rdp_is_never_below_the_gaussian_mechanism_and_grows_with_the_order(sigma, n, l2, d):
    rdp = ddg_rdp(ORDERS, sigma=sigma, num_clients=n, l2_sensitivity=l2, dim=d)
    assert np.all(rdp >= ORDERS * l2**2 / (2 * n * sigma**2) * (1 - 1e-12))
    assert np.all(np.diff(rdp) >= 0)


# Kairouz, Liu & Steinke's reference accounting (google-research/federated, distributed_dp/accounting_utils.py at
# commit a5af8c4433c9ee2d2b1565f1bcc68c89e2000a6b), run unmodified with tensorflow_privacy's RDP-to-(ε, δ)
# conversion transcribed (rdp_accountant._compute_eps): ddgauss_epsilon(gamma, local_stddev, num_clients, l2_sens,
# beta=exp(-1/2), dim, q, steps, delta) -> (epsilon, order); rounded_l2_norm_bound(l2_sens / gamma, beta, dim); and
# compute_rdp_dgaussian(...) for one step at the orders REFERENCE_ORDERS. Real units in, as the reference takes them:
# secure-ffm's functions take integer units (σ = local_stddev / γ, sensitivity = the rounded bound).
REFERENCE_ORDERS = (2, 3, 8, 32, 128, 256)
REFERENCE_DDG = [
    # gamma, local_stddev, clients, l2_sens, dim, q, steps, delta, rounded l2 bound, epsilon, best order, one-step RDP
    (
        0.001,
        0.03,
        100,
        0.03,
        65536,
        0.029411764705882353,
        1500,
        0.0002941176470588235,
        132.06816421833082,
        2.4444986050299593,
        5,
        [0.000184977257416702, 0.000324761152189032, 0.00143716609723102, 0.0115811675405485, 8.85772334822219, 21.2705188940664],
    ),
    (
        1e-05,
        0.31,
        8,
        1.0,
        73728,
        0.12109744560075686,
        20,
        1e-05,
        100000.59283706521,
        7.915598663144326,
        3,
        [0.0384359670827217, 0.155695359155072, 2.94809412924422, 18.668078743291, 81.1284726062946, 164.380079789162],
    ),
    (
        0.25,
        0.2,
        400,
        1.0,
        64,
        1.0,
        10,
        1e-05,
        6.324555320336759,
        11.210723399413332,
        3,
        [0.427268794624696, 0.640903191937044, 1.70907517849878, 4.85748935726889, 12.3574893572689, 22.3574893572689],
    ),
    (
        0.5,
        0.35,
        100,
        0.5,
        16,
        0.5,
        5,
        1e-06,
        2.8284271247461903,
        12.71124248299723,
        3,
        [0.450643016495426, 1.35165169129146, 3.09750652863727, 4.99511281057242, 12.8216544743253, 23.2690314867164],
    ),
    (
        0.0001,
        0.03,
        1000,
        1.0,
        207000,
        0.1,
        100,
        1e-06,
        10003.0983943108,
        12.431714782453781,
        3,
        [0.0201929863680921, 0.0647873075591386, 1.97702279491639, 15.4473730721663, 68.8431187964162, 140.003061425492],
    ),
]
REFERENCE_CASES = [
    "EMNIST setting of the paper (100 of 3,400 clients, c = 0.03, 1,500 rounds, d = 2^16)",
    "sample-level DP-SGD over 8 shares, 73,728 coordinates, q = 128/1,057, 20 steps",
    "coarse grid: shares of σ = 0.8 units, τ·d = 2.4",
    "coarser: shares of σ = 0.7 units, τ·d = 3.1, q = 1/2",
    "user-level at scale: 1,000 shares, 207,000 coordinates",
]


@pytest.mark.parametrize("case", REFERENCE_DDG, ids=REFERENCE_CASES)
def test_ddg_accounting_matches_the_authors_reference_implementation(case):
    gamma, local_stddev, n, l2, dim, q, steps, delta, rounded_l2, epsilon, _, rdp_one_step = case
    bound = rounded_norm_bound(norm=l2, granularity=gamma, dim=dim, beta=math.exp(-0.5))
    assert bound == pytest.approx(rounded_l2, rel=1e-12)
    sigma = local_stddev / gamma

    def per_round(orders):
        return ddg_rdp(orders, sigma=sigma, num_clients=n, l2_sensitivity=bound, dim=dim)

    np.testing.assert_allclose(subsampled_rdp(np.array(REFERENCE_ORDERS), per_round, sample_rate=q), rdp_one_step, rtol=1e-9)
    eps = ddg_epsilon(sigma=sigma, num_clients=n, l2_sensitivity=bound, dim=dim, steps=steps, sample_rate=q, delta=delta)
    assert eps == pytest.approx(epsilon, rel=1e-9)
