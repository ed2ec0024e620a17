"""Properties of every registered partitioner, and what each one is for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.data import PARTITIONERS, PartitionSpec
from secure_ffm.errors import ConfigError

NAMES = ["dirichlet", "iid", "quantity", "shards"]
PROPERTY = settings(max_examples=50, deadline=None, database=None)


@st.composite
def pools(draw: st.DrawFn, *, min_size: int = 1) -> tuple[np.ndarray, int]:
    """Labels of a pool and a client count that the pool can hold (also as two shards each)."""
    num_classes = draw(st.integers(1, 8))
    labels = np.asarray(draw(st.lists(st.integers(0, num_classes - 1), min_size=min_size, max_size=300)), dtype=np.int64)
    clients = draw(st.integers(1, max(1, min(20, len(labels) // 2))))
    return labels, clients


def run(name: str, labels: np.ndarray, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    return PARTITIONERS.get(name)(labels, spec, rng=np.random.default_rng(seed))


def test_registry_holds_the_four_partitioners() -> None:
    assert list(PARTITIONERS) == NAMES


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(pool=pools(min_size=2), alpha=st.floats(0.05, 100.0), seed=st.integers(0, 2**32 - 1))
def test_parts_are_sorted_disjoint_and_cover_every_index(name: str, pool: tuple[np.ndarray, int], alpha: float, seed: int) -> None:
    labels, clients = pool
    spec = PartitionSpec(num_clients=clients, alpha=alpha, shards_per_client=2)

    parts = run(name, labels, spec, seed)

    assert len(parts) == clients
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(pool=pools(), seed=st.integers(0, 2**32 - 1))
def test_same_seed_gives_the_same_partition(name: str, pool: tuple[np.ndarray, int], seed: int) -> None:
    labels, clients = pool
    spec = PartitionSpec(num_clients=clients, shards_per_client=1)

    first, again = run(name, labels, spec, seed), run(name, labels, spec, seed)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_another_seed_gives_another_partition(name: str) -> None:
    labels = np.repeat(np.arange(4), 50)
    spec = PartitionSpec(num_clients=5)

    first, other = run(name, labels, spec, 0), run(name, labels, spec, 1)

    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(pool=pools(min_size=40), least=st.integers(1, 4), alpha=st.floats(0.3, 10.0), seed=st.integers(0, 2**32 - 1))
def test_every_client_gets_at_least_min_partition_size(
    name: str, pool: tuple[np.ndarray, int], least: int, alpha: float, seed: int
) -> None:
    labels, clients = pool
    clients = min(clients, len(labels) // (4 * least))
    spec = PartitionSpec(num_clients=max(clients, 1), alpha=alpha, min_partition_size=least, shards_per_client=1)

    parts = run(name, labels, spec, seed)

    assert min(len(p) for p in parts) >= least


@pytest.mark.parametrize("name", NAMES)
def test_more_clients_than_examples_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="11 clients but only 10 training examples") as caught:
        run(name, np.zeros(10, dtype=np.int64), PartitionSpec(num_clients=11), 0)

    assert caught.value.key == "data.num_clients"
    assert "data.max_train_examples" in str(caught.value)


@pytest.mark.parametrize("name", NAMES)
def test_min_partition_size_beyond_the_pool_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="need 12 training examples but there are only 10") as caught:
        run(name, np.zeros(10, dtype=np.int64), PartitionSpec(num_clients=4, min_partition_size=3), 0)

    assert caught.value.key == "data.num_clients"


def _mean_label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the pool's."""
    overall = np.bincount(labels) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=len(overall)) / len(p) - overall).sum() for p in parts]))


def test_dirichlet_label_skew_grows_as_alpha_shrinks() -> None:
    labels = np.repeat(np.arange(10), 100)

    def skew(alpha: float) -> float:
        spec = PartitionSpec(num_clients=10, alpha=alpha, min_partition_size=2)
        return float(np.mean([_mean_label_skew(run("dirichlet", labels, spec, seed), labels) for seed in range(5)]))

    strong, medium, weak = skew(0.1), skew(1.0), skew(100.0)

    # Measured: about 0.71, 0.38 and 0.04.
    assert strong > medium + 0.15 > weak + 0.3


def test_dirichlet_gives_up_with_a_config_error_when_the_minimum_is_unreachable() -> None:
    spec = PartitionSpec(num_clients=10, alpha=0.001, min_partition_size=2)

    with pytest.raises(ConfigError, match="draws from Dir") as caught:
        run("dirichlet", np.zeros(20, dtype=np.int64), spec, 0)

    assert caught.value.key == "data.min_partition_size"


@PROPERTY
@given(
    clients=st.integers(1, 12),
    shards_per_client=st.integers(1, 3),
    shard_size=st.integers(1, 6),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_gives_at_most_shards_per_client_classes_on_balanced_labels(
    clients: int, shards_per_client: int, shard_size: int, data: st.DataObject, seed: int
) -> None:
    count = clients * shards_per_client
    num_classes = data.draw(st.sampled_from([c for c in range(1, count + 1) if count % c == 0]))
    labels = np.repeat(np.arange(num_classes), count // num_classes * shard_size)
    spec = PartitionSpec(num_clients=clients, shards_per_client=shards_per_client)

    parts = run("shards", labels, spec, seed)

    assert max(len(np.unique(labels[p])) for p in parts) <= shards_per_client
    assert {len(p) for p in parts} == {shards_per_client * shard_size}


def test_shards_more_shards_than_examples_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="= 12 shards but only 10") as caught:
        run("shards", np.zeros(10, dtype=np.int64), PartitionSpec(num_clients=4, shards_per_client=3), 0)

    assert caught.value.key == "data.shards_per_client"


@pytest.mark.parametrize("name", ["iid", "shards"])
@PROPERTY
@given(pool=pools(), seed=st.integers(0, 2**32 - 1))
def test_balanced_partitioners_give_sizes_that_differ_by_at_most_one(name: str, pool: tuple[np.ndarray, int], seed: int) -> None:
    labels, clients = pool
    sizes = [len(p) for p in run(name, labels, PartitionSpec(num_clients=clients, shards_per_client=1), seed)]

    assert max(sizes) - min(sizes) <= 1


def test_quantity_sizes_are_unequal_for_small_alpha_and_even_for_large() -> None:
    labels = np.repeat(np.arange(10), 100)

    def spread(alpha: float) -> float:
        """Mean coefficient of variation of the client sizes over five seeds."""
        spec = PartitionSpec(num_clients=10, alpha=alpha, min_partition_size=2)
        sizes = [np.array([len(p) for p in run("quantity", labels, spec, seed)]) for seed in range(5)]
        return float(np.mean([s.std() / s.mean() for s in sizes]))

    # Measured: about 1.9 and 0.03.
    assert spread(0.1) > 1.0
    assert spread(1000.0) < 0.2


def test_quantity_keeps_labels_iid_within_large_clients() -> None:
    labels = np.repeat(np.arange(4), 2500)
    parts = run("quantity", labels, PartitionSpec(num_clients=4, alpha=50.0), 0)

    assert _mean_label_skew(parts, labels) < 0.05
