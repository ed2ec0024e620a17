"""federate(): the server's public split, the clients' partitions and their histograms."""

from __future__ import annotations

import numpy as np
import pytest

from secure_ffm.config import DataConfig
from secure_ffm.data import DatasetSplits, FederatedData, LabeledData, federate, load_federated_data
from secure_ffm.errors import ConfigError, MissingResourceError


def toy_splits(n: int = 400, num_classes: int = 4) -> DatasetSplits:
    """Texts are unique ids, so examples can be traced through subsets."""
    labels = np.arange(n) % num_classes
    train = LabeledData(kind="text", inputs=tuple(f"ex{i}" for i in range(n)), labels=labels)
    test = LabeledData(kind="text", inputs=("t0", "t1"), labels=np.array([0, 1]))
    return DatasetSplits(name="toy", train=train, test=test, class_names=tuple(f"c{i}" for i in range(num_classes)))


def client_texts(data: FederatedData) -> list[set[str]]:
    return [set(data.client_data(k).inputs) for k in range(data.num_clients)]


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards", "quantity"])
def test_public_split_is_disjoint_from_every_client(partition: str) -> None:
    splits = toy_splits()
    config = DataConfig(num_clients=6, partition=partition, public_fraction=0.25)

    data = federate(splits, config, seed=0)

    assert data.public is not None
    public = set(data.public.inputs)
    clients = client_texts(data)
    assert all(public.isdisjoint(c) for c in clients)
    assert public | set().union(*clients) == set(splits.train.inputs)


def test_public_split_has_the_configured_share_stratified() -> None:
    data = federate(toy_splits(), DataConfig(num_clients=4, public_fraction=0.1), seed=0)

    assert data.public is not None
    assert len(data.public) == 40 and len(data.private) == 360
    assert np.bincount(data.public.labels).tolist() == [10, 10, 10, 10]


def test_no_public_split_when_the_fraction_is_zero() -> None:
    splits = toy_splits()

    data = federate(splits, DataConfig(num_clients=4), seed=0)

    assert data.public is None
    assert data.private is splits.train
    assert data.test is splits.test


def test_histograms_count_each_clients_labels() -> None:
    data = federate(toy_splits(), DataConfig(num_clients=5, alpha=0.3), seed=2)

    assert len(data.label_histograms) == data.num_clients
    for k, histogram in enumerate(data.label_histograms):
        assert sum(histogram) == len(data.client_indices[k])
        assert histogram == tuple(np.bincount(data.client_data(k).labels, minlength=4).tolist())


def test_federate_is_reproducible_for_a_seed() -> None:
    config = DataConfig(num_clients=5, public_fraction=0.2)

    first, again, other = (federate(toy_splits(), config, seed=s) for s in (1, 1, 2))

    assert client_texts(first) == client_texts(again) != client_texts(other)


def test_unknown_partition_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dirichlet'") as caught:
        federate(toy_splits(), DataConfig(partition="dirichlett"), seed=0)

    assert caught.value.key == "data.partition"


def test_too_many_clients_for_the_private_pool_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="41 clients but only 40 training examples"):
        federate(toy_splits(n=50), DataConfig(num_clients=41, min_partition_size=0, public_fraction=0.2), seed=0)


def test_load_federated_data_runs_end_to_end_on_trec() -> None:
    config = DataConfig(dataset="trec", num_clients=8, max_train_examples=600, public_fraction=0.1)
    try:
        data = load_federated_data(config, seed=0)
    except MissingResourceError as error:
        pytest.skip(str(error))

    assert data.public is not None and len(data.public) == 60
    assert sum(len(i) for i in data.client_indices) == 540
    assert data.dataset.num_classes == 6
