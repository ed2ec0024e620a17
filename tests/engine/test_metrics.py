import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.metrics import accuracy, macro_f1


def test_macro_f1_hand_computed():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fp0 fn1 -> 0
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert accuracy(y_true, y_pred) == pytest.approx(3 / 5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40))
def test_perfect_prediction_scores_one(labels):
    y = np.array(labels)
    assert macro_f1(y, y) == 1.0
    assert accuracy(y, y) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_scores_are_in_unit_interval(pairs):
    y_true = np.array([a for a, _ in pairs])
    y_pred = np.array([b for _, b in pairs])
    assert 0.0 <= macro_f1(y_true, y_pred) <= 1.0


def _reference_macro_f1(y_true, y_pred):
    """The per-class loop over ``np.union1d`` (the general path), on labels made non-integer so it is the one taken."""
    return macro_f1(np.asarray(y_true).astype(object), np.asarray(y_pred).astype(object))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=60))
def test_integer_labels_score_bitwise_as_the_general_path_and_scikit_learn(pairs):
    from sklearn.metrics import f1_score

    y_true = np.array([a for a, _ in pairs])
    y_pred = np.array([b for _, b in pairs])
    fast = macro_f1(y_true, y_pred)
    assert fast == _reference_macro_f1(y_true, y_pred)
    assert fast == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
