"""pareto_front on hand-made cases: (attack success, utility), the first minimized and the second maximized."""

import math

import pytest

from eval.metrics import dominates, pareto_front


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(10.0, 0.5)], [0]),
        # (12, 0.7) beats (25, 0.6) and (12, 0.5) on both; (30, 0.8) is the most useful
        ([(30.0, 0.8), (12.0, 0.7), (25.0, 0.6), (12.0, 0.5)], [1, 0]),
        # a chain where every point trades privacy for utility: all on the front, sorted by attack success
        ([(30.0, 0.9), (10.0, 0.5), (20.0, 0.7)], [1, 2, 0]),
        # one point dominates all others
        ([(5.0, 0.95), (10.0, 0.9), (20.0, 0.5), (6.0, 0.94)], [0]),
        # equal points do not dominate each other
        ([(10.0, 0.5), (10.0, 0.5), (11.0, 0.4)], [0, 1]),
        # same utility, less leakage wins; same leakage, more utility wins
        ([(10.0, 0.5), (12.0, 0.5), (10.0, 0.4)], [0]),
        # NaN and None coordinates are never on the front (a failed audit)
        ([(math.nan, 0.9), (10.0, 0.5), (None, 0.99)], [1]),
    ],
)
def test_pareto_front_hand_cases(points, front):
    assert pareto_front(points) == front


def test_pareto_front_other_directions_and_dimensions():
    # maximize both: the upper-right corner
    assert pareto_front([(1, 1), (2, 2), (3, 1), (1, 3)], maximize=(True, True)) == [3, 1, 2]
    # three objectives, the last minimized (e.g. seconds)
    points = [(0.9, 20.0, 5.0), (0.9, 20.0, 9.0), (0.8, 25.0, 1.0)]
    assert pareto_front(points, maximize=(True, False, False)) == [2, 0]


def test_pareto_front_rejects_points_of_the_wrong_size():
    with pytest.raises(ValueError, match="2 coordinates"):
        pareto_front([(1.0, 2.0, 3.0)])


def test_dominates_is_strict():
    assert dominates((1.0, 0.9), (2.0, 0.8), (False, True))
    assert not dominates((1.0, 0.9), (1.0, 0.9), (False, True))
    assert not dominates((1.0, 0.7), (2.0, 0.8), (False, True))


def test_attack_metric_functions_are_re_exported():
    import eval.metrics as metrics

    for name in ("psnr", "ssim", "mse", "label_accuracy", "token_prf", "rouge_n", "rouge_l", "score_images", "score_texts"):
        assert callable(getattr(metrics, name)), name
        assert name in metrics.__all__
