"""The EWC penalty's numeric core: its value, its proximal step, and importances recorded as running means."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.engine.training import LocalExtras, QuadraticPenalty

floats = st.floats(min_value=-10, max_value=10, allow_nan=False)
weights = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


def named(values):
    return [("w", torch.nn.Parameter(torch.tensor(values, dtype=torch.float32)))]


def test_the_value_is_half_the_weighted_squared_distance():
    penalty = QuadraticPenalty({"w": np.array([2.0, 0.0])}, {"w": np.array([1.0, 5.0])})
    assert penalty.value(named([3.0, -1.0])) == 0.5 * (2.0 * 4.0)


@settings(max_examples=60, deadline=None)
@given(floats, floats, weights, st.floats(min_value=1e-4, max_value=1.0))
def test_the_proximal_step_solves_its_optimality_condition(p, a, w, lr):
    params = named([p])
    QuadraticPenalty({"w": np.array([w])}, {"w": np.array([a])}).proximal_step(params, lr)
    result = float(params[0][1].detach())
    # minimizer of (x - p)^2 / (2 lr) + w/2 (x - a)^2: (x - p) / lr + w (x - a) = 0, and x between p and a
    assert abs((result - p) + lr * w * (result - a)) <= 1e-4 * (1 + abs(p) + abs(a)) * (1 + lr * w)
    assert min(p, a) - 1e-4 <= result <= max(p, a) + 1e-4


def test_a_huge_weight_lands_on_the_anchor_where_a_gradient_step_would_diverge():
    params = named([1.0])
    QuadraticPenalty({"w": np.array([1e6])}, {"w": np.array([0.0])}).proximal_step(params, 0.1)
    assert abs(float(params[0][1].detach())) < 1e-4  # an explicit step would give 1 - 0.1 * 1e6 = -99999


def test_a_penalty_needs_an_anchor_per_weight():
    with pytest.raises(ValueError, match="one weight and one anchor"):
        QuadraticPenalty({"w": np.zeros(1)}, {})


def test_the_penalty_round_trips_through_the_broadcast_arrays():
    arrays = QuadraticPenalty.to_arrays({"w": np.ones(2)}, {"w": np.zeros(2)})
    penalty = QuadraticPenalty.from_arrays({**arrays, "something/else": np.ones(1)})
    assert set(penalty.weights) == {"w"} and QuadraticPenalty.from_arrays({}) is None


def test_importances_are_the_running_mean_of_squared_gradients():
    extras, params = LocalExtras(importance={}), named([0.0, 0.0])
    for step, grad in enumerate(([1.0, 2.0], [3.0, 0.0])):
        params[0][1].grad = torch.tensor(grad)
        extras.record(params, step)
    assert np.allclose(extras.importance["w"], [(1 + 9) / 2, (4 + 0) / 2])


def test_a_known_noise_variance_is_taken_off_each_squared_gradient():
    extras, params = LocalExtras(importance={}), named([0.0])
    params[0][1].grad = torch.tensor([3.0])
    extras.record(params, 0, noise_variance=4.0)
    assert np.allclose(extras.importance["w"], [5.0])  # E[(g + n)^2] = g^2 + var: the estimate of g^2
