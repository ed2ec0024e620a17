"""Turn train/test splits into a federation: the server's public data and client partitions.

The server's public data is either a share of the training split (``data.public_fraction``) or a
separate dataset (``[public_data]``, :func:`load_public_data`): e.g. a general corpus for the
server while the clients hold domain text. Either way it is held by the server and no client
ever receives it.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from secure_ffm.config import Config, DataConfig
from secure_ffm.data.base import DatasetSplits, FederatedData, LabeledData, label_histogram, require_labels, without_labels
from secure_ffm.data.load import load_dataset_splits
from secure_ffm.data.partition import PARTITIONERS, PartitionSpec
from secure_ffm.data.split import derive_rng, stratified_split
from secure_ffm.errors import ConfigError, section_renamed

logger = logging.getLogger(__name__)


def federate(splits: DatasetSplits, config: DataConfig, seed: int, *, public: LabeledData | None = None) -> FederatedData:
    """Split the training data between the server's public split and the clients.

    1. When ``public`` is given (a separate public dataset, :func:`load_public_data`), it is
       the server's public data and the whole train split is private. Otherwise, when
       ``config.public_fraction > 0``, a stratified ``public_fraction`` of the train split
       (rounded, at least one example) becomes ``public``; otherwise ``public`` is ``None``.
       The public data is held by the server and never given to a client.
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
    if public is not None:
        if config.public_fraction > 0:
            raise ConfigError("data.public_fraction", "cannot be combined with a separate public dataset", "set it to 0")
        private = train
    elif config.public_fraction > 0:
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


def load_public_data(config: DataConfig, private: DatasetSplits, seed: int, *, labels: bool = True) -> LabeledData:
    """The server's public data from a separate dataset (``[public_data]``): its train split.

    The split is capped at ``config.max_train_examples`` (a stratified subset drawn with ``seed``).

    Parameters
    ----------
    config:
        The ``[public_data]`` section (the ``[data]`` keys that name a source).
    private:
        The clients' dataset, which the public data must match.
    seed:
        The run seed.
    labels:
        Whether the run trains a classifier. Then the public data must be labeled with classes of
        the private data (its label ids are mapped to the private ids by class name). Otherwise
        (masked-language modelling) its labels are dropped and any text dataset serves.

    Raises
    ------
    ConfigError
        On a ``public_data.*`` key: the source cannot be loaded, holds another kind of data than
        ``data.dataset`` (images for text), or, for a classifier, is unlabeled or labeled with
        classes the private data does not have.
    """
    with section_renamed("data", "public_data"):
        splits = load_dataset_splits(config, seed)
    if splits.kind != private.kind:
        raise ConfigError(
            "public_data.dataset",
            f"{config.dataset!r} holds {splits.kind} data but data.dataset {private.name!r} holds {private.kind} data",
            f"give the server {private.kind} data, like the clients'",
        )
    public = splits.train
    if private.kind == "image":
        # one model standardises every input alike: the public images with the private data's statistics
        public = dataclasses.replace(public, normalization=private.normalization)
    if not labels:
        return without_labels(public)
    require_labels(splits, key="public_data.dataset")
    if splits.class_names == private.class_names:
        return public
    unknown = [name for name in splits.class_names if name not in private.class_names]
    if unknown:
        raise ConfigError(
            "public_data.dataset",
            f"{config.dataset!r} has classes {', '.join(map(repr, unknown))} that data.dataset {private.name!r} does not "
            f"(its classes: {', '.join(map(repr, private.class_names))})",
            'label the public data with the private data\'s class names, or use it unlabeled with model.objective = "mlm"',
        )
    mapping = np.asarray([private.class_names.index(name) for name in splits.class_names], dtype=np.int64)
    return LabeledData(kind=public.kind, inputs=public.inputs, labels=mapping[public.labels], normalization=public.normalization)


def load_federated_data(config: DataConfig, seed: int, *, public: DataConfig | None = None, labels: bool = True) -> FederatedData:
    """:func:`~secure_ffm.data.load.load_dataset_splits` followed by :func:`federate`.

    ``public`` is a separate public dataset (``[public_data]``, :func:`load_public_data`). ``labels``
    says whether a classifier trains on the data: then unlabeled data is refused
    (:func:`~secure_ffm.data.base.require_labels`, naming ``data.dataset`` or ``public_data.dataset``).
    """
    splits = load_dataset_splits(config, seed)
    if labels:
        require_labels(splits, key="data.dataset")
    public_data = load_public_data(public, splits, seed, labels=labels) if public is not None else None
    return federate(splits, config, seed, public=public_data)


def needs_labels(config: Config) -> bool:
    """Whether the run's model trains on labels (the objective's ``reads_labels``; masked-language modelling does not)."""
    from secure_ffm.models.objectives import OBJECTIVES

    return OBJECTIVES.get(config.model.objective, key="model.objective").reads_labels


def load_run_data(config: Config) -> FederatedData:
    """The data of a run: ``[data]`` federated over the clients, with ``[public_data]`` (if any) as the server's public data.

    Every command loads a run's data here (train, privacy, sweep checks), so they all refuse the same bad
    input: e.g. unlabeled text for a classifier (:func:`needs_labels`).
    """
    if config.continual is not None:
        from secure_ffm.data.stages import load_continual_data

        return load_continual_data(config)
    return load_federated_data(config.data, config.run.seed, public=config.public_data, labels=needs_labels(config))
