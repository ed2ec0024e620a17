"""Definitions of the numeric core (pruning, clipping, quantization) and of the transforms built on it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from defenses.core import (
    l2_norm,
    prune_by_magnitude,
    pruned_count,
    quantization_step,
    quantize_sign,
    quantize_uniform,
    top_fraction,
)
from defenses.transforms import GaussianNoise, L2Clip, Prune, Quantize
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.engine.wire import ClientUpdate

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
# a few repeated magnitudes make ties (and +-x pairs) common
tied = st.one_of(st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0]), finite)
float32_arrays = arrays(np.float32, array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9), elements=tied)
fractions = st.floats(0.0, 0.999, allow_nan=False)


def context(seed: int = 0) -> TransformContext:
    return TransformContext(round=1, client_id=0, rng=np.random.default_rng(seed), global_parameters={})


def update(**delta: np.ndarray) -> ClientUpdate:
    return ClientUpdate(0, 1, dict(delta), 10)


# ------------------------------------------------------------------ pruning


@pytest.mark.parametrize(("size", "fraction", "expected"), [(100, 0.29, 29), (10, 0.0, 0), (7, 0.5, 3), (10, 0.99, 9), (3, 0.2, 0)])
def test_pruned_count_is_the_floor_of_the_fraction_as_written(size, fraction, expected):
    assert pruned_count(size, fraction) == expected


@settings(max_examples=150, deadline=None)
@given(float32_arrays, fractions)
def test_prune_zeroes_exactly_the_smallest_magnitudes_ties_by_position(array, fraction):
    out = prune_by_magnitude(array, fraction)
    k = pruned_count(array.size, fraction)
    order = np.argsort(np.abs(array).reshape(-1), kind="stable")  # by (|x|, C-order position)
    expected = array.reshape(-1).copy()
    expected[order[:k]] = 0
    np.testing.assert_array_equal(out.reshape(-1), expected)
    kept = np.ones(array.size, dtype=bool)
    kept[order[:k]] = False
    if k and kept.any():
        assert np.abs(array.reshape(-1)[~kept]).max() <= np.abs(array.reshape(-1)[kept]).min()
    assert out.dtype == array.dtype and out.shape == array.shape


def test_prune_breaks_ties_toward_the_earlier_position():
    out = prune_by_magnitude(np.array([1.0, -1.0, 1.0, 3.0, -1.0], np.float32), 0.4)
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 3.0, -1.0])


def test_prune_transform_prunes_each_array_by_the_same_fraction():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 1e-3, 50).astype(np.float32), rng.normal(0, 10, (20, 5)).astype(np.float32)
    out = Prune(fraction=0.8)(update(small=small, large=large), context()).delta
    assert np.count_nonzero(out["small"]) == 10  # a global threshold would zero all of the small array
    assert np.count_nonzero(out["large"]) == 20


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(0, 30), elements=st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(-5, 5))), fractions)
def test_top_fraction_takes_the_largest_scores_ties_by_position(scores, fraction):
    chosen = top_fraction(scores, fraction)
    k = pruned_count(scores.size, fraction)
    assert chosen.tolist() == sorted(np.argsort(-scores, kind="stable")[:k].tolist())
    rest = np.setdiff1d(np.arange(scores.size), chosen)
    if chosen.size and rest.size:
        assert scores[chosen].min() >= scores[rest].max()


# ------------------------------------------------------------------ clipping and noise


@settings(max_examples=60, deadline=None)
@given(float32_arrays, float32_arrays, st.floats(0.01, 100))
def test_l2_clip_bounds_the_joint_norm_and_keeps_the_direction(a, b, bound):
    out = L2Clip(clip_norm=bound)(update(a=a, b=b), context()).delta
    norm = l2_norm({"a": a, "b": b})
    assert l2_norm(out) <= bound * (1 + 1e-5) + 1e-6
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    for key, x in (("a", a), ("b", b)):
        np.testing.assert_allclose(out[key], x * factor, rtol=1e-5, atol=1e-6)
    if norm <= bound:
        np.testing.assert_array_equal(out["a"], a)


def test_gaussian_noise_has_the_configured_std_and_comes_from_the_context_generator():
    x = np.full(200_000, 0.25, np.float32)
    out = GaussianNoise(std=0.3)(update(x=x), context(5)).delta["x"]
    assert abs((out - x).std() - 0.3) < 0.003  # the sample std's std is 0.3 / sqrt(2 n) = 0.0005
    assert abs((out - x).mean()) < 0.003
    np.testing.assert_array_equal(out, GaussianNoise(std=0.3)(update(x=x), context(5)).delta["x"])
    assert not np.array_equal(out, GaussianNoise(std=0.3)(update(x=x), context(6)).delta["x"])


# ------------------------------------------------------------------ quantization


@settings(max_examples=120, deadline=None)
@given(float32_arrays, st.integers(2, 10), st.integers(0, 2**32 - 1))
def test_stochastic_quantization_moves_each_coordinate_by_at_most_one_step_onto_the_grid(array, bits, seed):
    q = quantize_uniform(array, bits, np.random.default_rng(seed))
    step = quantization_step(array, bits)
    m = float(np.abs(array).max())
    assert q.dtype == array.dtype and q.shape == array.shape
    assert np.all(np.abs(q.astype(np.float64) - array) <= step * (1 + 1e-6) + 1e-6 * m)
    if step > 0:
        if m >= np.finfo(array.dtype).tiny * 2**bits:
            # on the grid (float32 rounding aside); a subnormal grid (max|x| near 1e-45) has no float32 points between levels
            levels = (q.astype(np.float64) + m) / step
            np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        assert len(np.unique(q)) <= 2**bits
        assert np.all(np.abs(q) <= m * (1 + 1e-6))
    else:
        assert not q.any()


def _standardized_mean_errors(quantize, x: np.ndarray, bits: int, draws: int) -> np.ndarray:
    """Per coordinate off the grid: (mean over draws of q - x) / its std under unbiased rounding, s sqrt(p (1-p) / draws).

    p is the coordinate's distance above the level below it, in steps; the coordinates on the grid
    (p = 0, such as the max) must come back exactly and are left out.
    """
    step = quantization_step(x, bits)
    p = (x.astype(np.float64) + step * (2**bits - 1) / 2) / step % 1.0
    errors = np.mean([quantize(x).astype(np.float64) - x for _ in range(draws)], axis=0)
    on_grid = (p < 1e-6) | (p > 1 - 1e-6)
    assert np.all(np.abs(errors[on_grid]) <= 1e-6)
    return errors[~on_grid] / (step * np.sqrt(p[~on_grid] * (1 - p[~on_grid]) / draws))


def test_stochastic_quantization_is_unbiased_per_coordinate():
    """Each coordinate's mean error over 4000 draws is within 5 standard errors of 0.

    Under the null (unbiased rounding) a coordinate exceeds 5 standard errors with probability
    about 6e-7, so 200 coordinates fail together with probability about 1e-4 (a Bonferroni bound;
    the generator is seeded, so the outcome is fixed). Deterministic round-to-nearest, which is
    biased, fails the same check by far (the last assertion shows the test has power).
    """
    x = np.random.default_rng(0).uniform(-1, 1, 200).astype(np.float32)
    rng = np.random.default_rng(1)
    z = _standardized_mean_errors(lambda a: quantize_uniform(a, 2, rng), x, 2, 4000)
    assert z.size >= 190
    assert np.max(np.abs(z)) < 5.0
    assert abs(z.mean()) * np.sqrt(z.size) < 5.0  # the z's are independent N(0, 1) under the null

    def nearest(a: np.ndarray) -> np.ndarray:
        step = quantization_step(a, 2)
        return np.round((a + 1.5 * step) / step) * step - 1.5 * step

    assert np.max(np.abs(_standardized_mean_errors(nearest, x, 2, 4000))) > 50


def test_sign_quantization_is_sign_times_mean_magnitude():
    x = np.array([[0.5, -2.0, 0.0], [1.5, -0.25, 0.25]], np.float32)
    np.testing.assert_array_equal(quantize_sign(x), np.sign(x) * np.float32(4.5 / 6))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=7).astype(np.float32)
    out = Quantize(bits=1)(update(a=a, b=b), context()).delta
    for key, x in (("a", a), ("b", b)):
        np.testing.assert_allclose(out[key], np.sign(x) * np.abs(x).mean(), rtol=1e-6)
        assert len(np.unique(np.abs(out[key]))) == 1


def test_quantize_transform_with_several_bits_uses_the_context_generator():
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    a = Quantize(bits=4)(update(x=x), context(3)).delta["x"]
    np.testing.assert_array_equal(a, quantize_uniform(x, 4, np.random.default_rng(3)))
    assert len(np.unique(a)) <= 16


def test_quantizing_non_finite_values_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        quantize_uniform(np.array([1.0, np.inf], np.float32), 4, np.random.default_rng(0))
