"""The pure measures of ``benchmarks/attack_text.py --content-leak``: rare word pieces, chance precision, paired differences."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # attack_text imports _common from its own folder
    try:
        spec = importlib.util.spec_from_file_location("attack_text_under_test", BENCHMARKS / "attack_text.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_rare_pieces_are_those_outside_the_common_set_and_hits_are_a_multiset(bench) -> None:
    common = frozenset({1, 2, 3})
    # recovered: two common (1, 2), four rare (7, 7, 8, 9); truth holds 7 once, 9 once, and 5 (rare, missed)
    stats = bench.rare_piece_stats([1, 7, 7, 8, 2, 9], [1, 7, 9, 5, 3], common)
    assert stats["pieces"] == 6 and stats["rare"] == 4
    assert stats["rare_fraction"] == pytest.approx(4 / 6)
    assert stats["rare_hits"] == 2  # 7 counts once (the sentence holds it once), 9 once, 8 not at all
    assert stats["rare_precision"] == pytest.approx(2 / 4)
    assert stats["truth_rare"] == 3 and stats["rare_recall"] == pytest.approx(2 / 3)


def test_rare_piece_stats_without_rare_pieces(bench) -> None:
    stats = bench.rare_piece_stats([1, 2], [1, 2], frozenset({1, 2}))
    assert stats["rare"] == 0 and stats["rare_fraction"] == 0.0
    assert stats["rare_precision"] is None and stats["rare_recall"] is None
    assert bench.rare_piece_stats([], [4], frozenset())["rare_fraction"] is None


def test_chance_precision_is_the_sentences_share_of_the_rare_unigram_mass(bench) -> None:
    counts = Counter({1: 100, 2: 50, 7: 6, 8: 3, 9: 1})
    # outside the common {1, 2}: mass 10; the sentence's rare pieces 7 and 9 hold 7 of it (repeats count once)
    assert bench.chance_rare_precision([1, 7, 7, 9], counts, frozenset({1, 2})) == pytest.approx(0.7)
    assert bench.chance_rare_precision([1, 2], counts, frozenset({1, 2})) == 0.0


def test_ranking_is_by_count_then_id(bench) -> None:
    assert bench.ranking_of(Counter({5: 2, 3: 2, 9: 7, 1: 1})).tolist() == [9, 3, 5, 1]


def test_paired_difference(bench) -> None:
    a = [0.5, 0.4, 0.3, 0.2]
    b = [0.1, 0.4, 0.4, 0.0]
    d = bench.paired_difference(a, b, resamples=2000, seed=0)
    assert d["n"] == 4 and d["mean_difference"] == pytest.approx(0.125)
    assert (d["wins"], d["ties"], d["losses"]) == (2, 1, 1)
    low, high = d["t_interval"]
    # t(0.975, 3) = 3.1824; differences 0.4, 0, -0.1, 0.2 have sd 0.2217
    assert high - low == pytest.approx(2 * 3.1824 * 0.22174 / 2, rel=1e-3)
    boot_low, boot_high = d["bootstrap_interval"]
    assert -0.1 <= boot_low <= 0.125 <= boot_high <= 0.4


def test_ratio_with_interval_pools_sentences(bench) -> None:
    r = bench.ratio_with_interval([1, 0, 3], [2, 2, 4], resamples=2000, seed=0)
    assert r["value"] == pytest.approx(4 / 8)
    low, high = r["interval"]
    assert 0.0 <= low <= 0.5 <= high <= 0.75
    assert bench.ratio_with_interval([0], [0])["value"] is None
