import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secure_ffm.privacy.gaussian import add_gaussian_noise, clip_l2, l2_norm

floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 20), elements=floats), arrays(np.float32, (3, 2), elements=floats), st.floats(0.01, 100))
def test_clipping_bounds_the_joint_norm_and_keeps_direction(a, b, bound):
    clipped, norm = clip_l2({"a": a, "b": b}, bound)
    assert l2_norm(clipped) <= bound * (1 + 1e-5) + 1e-6
    assert norm == l2_norm({"a": a, "b": b})
    if norm <= bound:
        np.testing.assert_array_equal(clipped["a"], a)


def test_noise_has_the_requested_standard_deviation():
    rng = np.random.default_rng(0)
    noisy = add_gaussian_noise({"x": np.zeros(200_000, np.float32)}, 0.7, rng)
    assert abs(noisy["x"].std() - 0.7) < 0.01
    assert abs(noisy["x"].mean()) < 0.01


def test_shares_of_m_clients_sum_to_the_central_noise():
    m, sigma = 16, 2.0
    rng = np.random.default_rng(1)
    total = sum(add_gaussian_noise({"x": np.zeros(50_000)}, sigma / np.sqrt(m), rng)["x"] for _ in range(m))
    assert abs(total.std() - sigma) < 0.03
