"""The seeded-stream and stratified-split helpers under the loaders and federate."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.data.split import apportion, derive_rng, stratified_split, stratified_subset

PROPERTY = settings(max_examples=50, deadline=None, database=None)


@PROPERTY
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=10).filter(lambda c: sum(c) > 0),
    share=st.floats(0.0, 1.0),
)
def test_apportion_sums_exactly_and_respects_capacity(counts: list[int], share: float) -> None:
    capacity = np.asarray(counts)
    total = round(share * capacity.sum())

    quota = apportion(capacity, total, capacity=capacity)

    assert quota.sum() == total
    assert np.all((quota >= 0) & (quota <= capacity))
    assert np.all(np.abs(quota - capacity * total / capacity.sum()) < 1)


@PROPERTY
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=200), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_stratified_split_is_a_partition_with_both_parts_non_empty(labels: list[int], fraction: float, seed: int) -> None:
    kept, held = stratified_split(np.asarray(labels), fraction, np.random.default_rng(seed))

    assert len(kept) > 0 and len(held) > 0
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))


def test_stratified_subset_keeps_label_proportions() -> None:
    labels = np.repeat([0, 1, 2], [500, 300, 200])

    chosen = stratified_subset(labels, 100, np.random.default_rng(0))

    assert np.bincount(labels[chosen]).tolist() == [50, 30, 20]


def test_named_streams_are_reproducible_and_independent() -> None:
    first, again = derive_rng(3, "partition").random(4), derive_rng(3, "partition").random(4)
    other_stream, other_seed = derive_rng(3, "public-split").random(4), derive_rng(4, "partition").random(4)

    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other_stream)
    assert not np.allclose(first, other_seed)
