"""Turn train/test splits into a federation: a server-held public split and client partitions."""

from __future__ import annotations

import logging

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.base import DatasetSplits, FederatedData, label_histogram
from secure_ffm.data.load import load_dataset_splits
from secure_ffm.data.partition import PARTITIONERS, PartitionSpec
from secure_ffm.data.split import derive_rng, stratified_split

logger = logging.getLogger(__name__)


def federate(splits: DatasetSplits, config: DataConfig, seed: int) -> FederatedData:
    """Split the training data between the server's public split and the clients.

    1. When ``config.public_fraction > 0``, a stratified ``public_fraction`` of
       the train split (rounded, at least one example) becomes ``public``, held by the
       server and never given to a client; otherwise ``public`` is ``None``.
    2. The rest is the ``private`` pool, partitioned over ``config.num_clients``
       clients by ``config.partition``.

    Each step draws from its own stream of ``seed`` (see
    :func:`~secure_ffm.data.split.derive_rng`), so e.g. turning the public split
    on changes which examples are private but not the generator of the partition.

    Raises
    ------
    ConfigError
        ``data.partition`` for an unknown partitioner; ``data.num_clients`` (or
        another ``data.*`` key) when the private pool cannot be split as asked.
    """
    partitioner = PARTITIONERS.get(config.partition, key="data.partition")
    train = splits.train
    if config.public_fraction > 0:
        private_idx, public_idx = stratified_split(train.labels, config.public_fraction, derive_rng(seed, "public-split"))
        private, public = train.subset(private_idx), train.subset(public_idx)
    else:
        private, public = train, None
    spec = PartitionSpec.from_config(config, num_classes=splits.num_classes)
    parts = partitioner(private.labels, spec, rng=derive_rng(seed, "partition"))
    histograms = tuple(label_histogram(private.labels[idx], splits.num_classes) for idx in parts)
    sizes = np.asarray([len(idx) for idx in parts])
    logger.info(
        "federated %s over %d clients (%s): %d private, %d public; client sizes %d..%d",
        splits.name,
        len(parts),
        config.partition,
        len(private),
        0 if public is None else len(public),
        sizes.min(),
        sizes.max(),
    )
    return FederatedData(
        dataset=splits,
        private=private,
        public=public,
        test=splits.test,
        client_indices=tuple(parts),
        label_histograms=histograms,
    )


def load_federated_data(config: DataConfig, seed: int) -> FederatedData:
    """:func:`~secure_ffm.data.load.load_dataset_splits` followed by :func:`federate`."""
    return federate(load_dataset_splits(config, seed), config, seed)
