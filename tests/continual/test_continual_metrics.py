"""Average accuracy, forgetting and backward transfer of an accuracy matrix (secure_ffm.continual.metrics)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_ffm.continual import metrics

HAND = [[0.9], [0.5, 0.8], [0.3, 0.6, 0.7]]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert metrics.average_accuracy(HAND) == pytest.approx((0.3 + 0.6 + 0.7) / 3)


def test_forgetting_is_the_mean_drop_from_each_earlier_stages_best():
    # stage 0: best 0.9, final 0.3 -> 0.6; stage 1: best 0.8, final 0.6 -> 0.2
    assert metrics.forgetting(HAND) == pytest.approx(0.4)


def test_backward_transfer_is_the_mean_change_from_just_learned_to_final():
    # (0.3 - 0.9 + 0.6 - 0.8) / 2
    assert metrics.backward_transfer(HAND) == pytest.approx(-0.4)


def test_one_stage_has_no_forgetting_or_transfer():
    assert metrics.forgetting([[0.7]]) is None and metrics.backward_transfer([[0.7]]) is None
    assert metrics.average_accuracy([[0.7]]) == pytest.approx(0.7)


def test_a_row_with_a_missing_seen_stage_is_refused():
    with pytest.raises(ValueError, match="row 1"):
        metrics.forgetting([[0.9], [0.5]])


def test_square_pads_the_unseen_entries_with_none():
    assert metrics.square([[0.9], [0.5, 0.8]], 3) == [[0.9, None, None], [0.5, 0.8, None], [None, None, None]]


@st.composite
def matrices(draw):
    size = draw(st.integers(min_value=2, max_value=6))
    unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
    return [[draw(unit) for _ in range(i + 1)] for i in range(size)]


@given(matrices())
def test_forgetting_is_at_least_the_loss_that_backward_transfer_shows(matrix):
    forgetting, transfer = metrics.forgetting(matrix), metrics.backward_transfer(matrix)
    assert forgetting >= -transfer - 1e-12  # the best accuracy of a stage is at least its just-learned one
    assert -1.0 <= forgetting <= 1.0
    assert 0.0 <= metrics.average_accuracy(matrix) <= 1.0
