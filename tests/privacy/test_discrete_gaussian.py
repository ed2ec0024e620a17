import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy import stats
from scipy.linalg import hadamard

from secure_ffm.privacy.discrete_gaussian import (
    DDG_ORDERS,
    DistributedDiscreteGaussian,
    calibrate_ddg_noise,
    conditional_randomized_rounding,
    ddg_epsilon,
    ddg_rdp,
    flatten,
    rotation_signs,
    rounded_norm_bound,
    sample_discrete_gaussian,
    subsampled_rdp,
    unflatten,
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


def test_fast_walsh_hadamard_equals_the_hadamard_matrix():
    signs = np.ones(16)
    x = np.arange(16.0)
    np.testing.assert_allclose(flatten(x, signs), hadamard(16) @ x / 4.0, atol=1e-12)


def test_rotation_signs_have_the_padded_length_and_depend_on_the_seed():
    signs = rotation_signs(1000, seed=7)
    assert signs.shape == (1024,)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    np.testing.assert_array_equal(signs, rotation_signs(1000, seed=7))
    assert not np.array_equal(signs, rotation_signs(1000, seed=8))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 70), elements=st.floats(-1e3, 1e3)), st.integers(0, 2**31))
def test_flatten_is_an_orthonormal_map_with_an_exact_inverse(x, seed):
    signs = rotation_signs(x.size, seed=seed)
    y = flatten(x, signs)
    scale = 1.0 + np.abs(x).max()
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= 1e-12 * scale * math.sqrt(signs.size)
    np.testing.assert_allclose(unflatten(y, signs, x.size), x, atol=1e-12 * scale * math.sqrt(signs.size))


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 40)), elements=st.floats(-10, 10)))
def test_flatten_treats_each_row_as_a_vector(rows):
    signs = rotation_signs(rows.shape[1], seed=3)
    np.testing.assert_allclose(flatten(rows, signs), np.stack([flatten(row, signs) for row in rows]), atol=1e-12)


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


def test_calibration_meets_but_never_exceeds_the_target():
    params = dict(clip_norm=1.0, num_shares=10, dim=1024, expected_contributions=20)
    accounting = dict(steps=100, sample_rate=0.01, delta=1e-5)
    mechanism = calibrate_ddg_noise(target_epsilon=2.0, **accounting, **params, tolerance=1e-3)
    assert mechanism.epsilon(**accounting) <= 2.0
    slightly_less = DistributedDiscreteGaussian(noise_multiplier=mechanism.noise_multiplier * (1 - 2e-3), **params)
    assert slightly_less.epsilon(**accounting) > 2.0


# --------------------------------------------------------------------------- the mechanism


def mechanism(noise_multiplier: float, **overrides) -> DistributedDiscreteGaussian:
    params = dict(clip_norm=1.0, noise_multiplier=noise_multiplier, num_shares=4, dim=64, expected_contributions=4)
    params.update(overrides)
    return DistributedDiscreteGaussian(**params)


def test_derived_quantities_follow_their_definitions():
    m = mechanism(1.5)
    c, z, n, d, big_n, k = 1.0, 1.5, 4, 64, 4, 4.0
    gamma = 2 * k * c * math.sqrt(big_n**2 / d + z**2) / math.sqrt(2.0**64 - k**2 * big_n)
    assert m.granularity == pytest.approx(gamma, rel=1e-12)
    assert m.share_sigma == pytest.approx(z * c / (gamma * math.sqrt(n)), rel=1e-12)
    assert m.l2_sensitivity == rounded_norm_bound(norm=c, granularity=gamma, dim=d, beta=math.exp(-0.5))


def test_encodings_without_noise_decode_to_the_sum_exactly():
    m = mechanism(0.0)
    rng = np.random.default_rng(0)
    integers = [rng.integers(-(2**28), 2**28, size=64) for _ in range(4)]
    total = np.zeros(64, np.uint32)
    for i, vector in enumerate(integers):
        total += m.encode(vector, stream=stream(20 + i))  # uint32 addition wraps mod 2^32 as secure aggregation does
    np.testing.assert_array_equal(m.decode(total), np.sum(integers, axis=0) * m.granularity)


def test_decoded_noisy_sum_is_within_the_expected_noise():
    m = mechanism(2.0)
    rows = np.random.default_rng(1).normal(size=(4, 64))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    total = np.zeros(64, np.uint32)
    for i in range(4):
        integer = m.round_contributions(rows[i : i + 1], stream=stream(30 + i))
        total += m.encode(integer, stream=stream(40 + i))
    error = m.decode(total) - rows.sum(axis=0)
    noise_std = 2.0 * 1.0  # z·c, all four shares arrived
    assert np.all(np.abs(error) < 5 * noise_std)
    assert 0.7 < error.std() / noise_std < 1.3


def test_round_contributions_sums_rounded_rows_within_one_unit_each():
    m = mechanism(1.0)
    rows = np.full((3, 64), 0.1)  # norm 0.8 <= clip_norm
    rounded_sum = m.round_contributions(rows, stream=stream(50))
    assert rounded_sum.dtype == np.int64
    assert np.all(np.abs(rounded_sum - rows.sum(axis=0) / m.granularity) < 3)


def test_round_contributions_rejects_unclipped_rows():
    with pytest.raises(ValueError, match="clip before rounding"):
        mechanism(1.0).round_contributions(np.full((1, 64), 1.0), stream=stream(51))


def test_zero_noise_gives_no_privacy():
    assert math.isinf(mechanism(0.0).epsilon(steps=1, sample_rate=1.0, delta=1e-5))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bits": 40}, "at most 32"),
        ({"bits": 2, "expected_contributions": 1}, "too small"),
        ({"noise_multiplier": -1.0}, "non-negative"),
        ({"clip_norm": 0.0}, "positive"),
        ({"num_shares": 0}, "whole number"),
        ({"beta": 1.0}, r"\[0, 1\)"),
    ],
)
def test_invalid_parameters_are_rejected_early(overrides, message):
    params = dict(clip_norm=1.0, noise_multiplier=1.0, num_shares=4, dim=64, expected_contributions=4)
    params.update(overrides)
    with pytest.raises(ValueError, match=message):
        DistributedDiscreteGaussian(**params)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.5, 100.0), st.integers(1, 1000), st.floats(0.1, 1e3), st.integers(1, 10**6))
def test_ddg_rdp_is_never_below_the_gaussian_mechanism_and_grows_with_the_order(sigma, n, l2, d):
    rdp = ddg_rdp(ORDERS, sigma=sigma, num_clients=n, l2_sensitivity=l2, dim=d)
    assert np.all(rdp >= ORDERS * l2**2 / (2 * n * sigma**2) * (1 - 1e-12))
    assert np.all(np.diff(rdp) >= 0)


def test_a_round_through_flattening_recovers_the_real_sum_within_the_noise():
    dim, clients, z = 100, 5, 1.0
    signs = rotation_signs(dim, seed=11)
    m = mechanism(z, dim=signs.size, num_shares=clients, expected_contributions=clients)
    updates = np.random.default_rng(2).normal(size=(clients, dim))
    updates /= np.linalg.norm(updates, axis=1, keepdims=True)
    total = np.zeros(signs.size, np.uint32)
    for i, update in enumerate(updates):
        integer = m.round_contributions(flatten(update, signs)[None, :], stream=stream(60 + i))
        total += m.encode(integer, stream=stream(70 + i))
    error = unflatten(m.decode(total), signs, dim) - updates.sum(axis=0)
    assert 0.7 < error.std() / z < 1.3  # the rotation is orthonormal, so the noise keeps its std z·c


def test_calibration_reports_an_unreachable_target():
    with pytest.raises(ValueError, match="cannot be met"):
        calibrate_ddg_noise(
            target_epsilon=1e-4, delta=1e-5, steps=10_000, sample_rate=1.0, clip_norm=1.0, num_shares=2, dim=64, expected_contributions=2
        )
