"""Datasets, their train/test splits and their partition over federated clients.

>>> from secure_ffm.config import DataConfig
>>> from secure_ffm.data import load_federated_data
>>> data = load_federated_data(DataConfig(dataset="trec", num_clients=4), seed=0)  # doctest: +SKIP
"""

from secure_ffm.data.base import DatasetSplits, FederatedData, LabeledData, label_histogram, require_labels
from secure_ffm.data.builtin import DATASETS
from secure_ffm.data.federate import federate, load_federated_data, load_public_data, load_run_data, needs_labels
from secure_ffm.data.load import load_dataset_splits
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.data.partition import PARTITIONERS, PartitionSpec

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DatasetSplits",
    "FederatedData",
    "ImageNormalization",
    "LabeledData",
    "PartitionSpec",
    "federate",
    "label_histogram",
    "load_dataset_splits",
    "load_federated_data",
    "load_public_data",
    "load_run_data",
    "needs_labels",
    "require_labels",
]
