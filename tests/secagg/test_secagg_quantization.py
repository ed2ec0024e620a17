"""Fixed-point encoding into Z_2^32: exact no-wrap sums, the stated error bound, unbiased rounding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secure_ffm.secagg.quantization import RING_MODULUS, decode_sum, encode, error_bound, levels_for, quantization_step


def test_levels_are_the_largest_power_of_two_that_cannot_wrap():
    # prepare / execute
    expected = {1: 2**32, 2: 2**31, 3: 2**30, 4: 2**30, 5: 2**29, 10: 2**28, 1000: 2**22, 2**16: 2**16}
    # assert: fixed values, and each is maximal (the next power of two could wrap)
    for n, levels in expected.items():
        assert levels_for(n) == levels
        assert n * (levels - 1) < RING_MODULUS <= n * (2 * levels - 1)
    assert levels_for(10, ring_bits=24) == 2**20


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    dim=st.integers(1, 16),
    clip=st.floats(1e-3, 1e3),
    levels=st.one_of(st.none(), st.integers(2, 300)),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_sum_is_within_the_stated_bound_of_the_clipped_sum(n, dim, clip, levels, data, seed):
    # prepare: n clients' values, some beyond the clip range
    values = data.draw(arrays(np.float64, (n, dim), elements=st.floats(-3 * clip, 3 * clip)))
    levels = levels or levels_for(n)
    rng = np.random.default_rng(seed)
    # execute
    total = np.zeros(dim, np.uint32)
    for row in values:
        total += encode(row, clip_range=clip, levels=levels, rng=rng)
    decoded = decode_sum(total, num_clients=n, clip_range=clip, levels=levels)
    # assert
    exact = np.clip(values, -clip, clip).sum(axis=0)
    bound = error_bound(num_clients=n, clip_range=clip, levels=levels)
    assert bound == pytest.approx(n * 2 * clip / (levels - 1), rel=1e-12)
    assert np.all(np.abs(decoded - exact) <= bound)


def test_stochastic_rounding_is_unbiased():
    # prepare: coarse levels (step 0.5) so that rounding to nearest would be visibly biased
    x = np.array([-0.9, -0.31, 0.0, 0.123, 0.77, 1.0])
    draws, clip, levels = 20_000, 1.0, 5
    step = quantization_step(clip_range=clip, levels=levels)
    rng = np.random.default_rng(7)
    # execute: 20k independent single-client encodings
    q = encode(np.broadcast_to(x, (draws, x.size)), clip_range=clip, levels=levels, rng=rng)
    decoded = decode_sum(q, num_clients=1, clip_range=clip, levels=levels)
    # assert: each rounding error has sd <= step/2, so the mean is within 6 sd of x
    tolerance = 6 * (step / 2) / np.sqrt(draws)
    assert tolerance < 0.02
    np.testing.assert_allclose(decoded.mean(axis=0), x, atol=tolerance)
    assert set(np.unique(q)) <= set(range(levels))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 1000, 65_535])
def test_no_wrap_when_every_client_sits_at_the_clip_range(n):
    # prepare
    clip = 2.5
    levels = levels_for(n)
    extremes = np.array([clip, 10 * clip, 1e30, -clip, -7 * clip, -1e30])
    rng = np.random.default_rng(n)
    # execute: at +-clip the encoding is deterministic (levels - 1 or 0), so n copies are the sum
    q = encode(extremes, clip_range=clip, levels=levels, rng=rng)
    np.testing.assert_array_equal(q.astype(np.uint64), [levels - 1] * 3 + [0] * 3)
    if n <= 10:
        clients = [encode(extremes, clip_range=clip, levels=levels, rng=rng) for _ in range(n)]
        total = np.sum(clients, axis=0, dtype=np.uint32)
    else:
        total = q * np.uint32(n)  # wraps mod 2^32 exactly as the ring sum would
    exact = q.astype(np.uint64) * np.uint64(n)
    # assert: the ring sum equals the integer sum (no wrap), and decodes to +-n*clip
    assert exact.max() < RING_MODULUS
    np.testing.assert_array_equal(total.astype(np.uint64), exact)
    decoded = decode_sum(total, num_clients=n, clip_range=clip, levels=levels)
    np.testing.assert_allclose(decoded, [n * clip] * 3 + [-n * clip] * 3, rtol=1e-12)


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_values_are_rejected(bad, word):
    values = np.array([0.1, bad, 0.2], dtype=np.float32)
    with pytest.raises(ValueError, match=word):
        encode(values, clip_range=1.0, levels=levels_for(2), rng=np.random.default_rng(0))


def test_invalid_parameters_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="clip_range"):
        encode(np.zeros(3), clip_range=0.0, levels=16, rng=rng)
    with pytest.raises(ValueError, match="levels"):
        encode(np.zeros(3), clip_range=1.0, levels=1, rng=rng)
    with pytest.raises(ValueError, match="real"):
        encode(np.zeros(3, complex), clip_range=1.0, levels=16, rng=rng)
    with pytest.raises(ValueError, match="wrap"):
        decode_sum(np.zeros(3, np.uint32), num_clients=3, clip_range=1.0, levels=levels_for(2))
    with pytest.raises(TypeError, match="uint32"):
        decode_sum(np.zeros(3, np.int64), num_clients=1, clip_range=1.0, levels=16)
