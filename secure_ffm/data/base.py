"""Typed containers for labelled data and its federated split.

Images are kept as one ``uint8`` array ``(N, H, W)``; texts as a tuple of strings.
Clients hold only index arrays into the shared private training pool, so a
federation of 1,000 clients costs 1,000 small integer arrays, not 1,000 copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

DataKind = Literal["image", "text"]


@dataclass(frozen=True)
class LabeledData:
    """A set of labelled examples of one kind.

    Parameters
    ----------
    kind:
        ``"image"`` (``inputs`` is a ``uint8`` array of shape ``(N, H, W)``) or
        ``"text"`` (``inputs`` is a tuple of ``N`` strings).
    inputs:
        The examples.
    labels:
        ``int64`` array of shape ``(N,)`` with values in ``[0, num_classes)``.
    """

    kind: DataKind
    inputs: np.ndarray | tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in ("image", "text"):
            raise ValueError(f"kind must be 'image' or 'text', got {self.kind!r}")
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")
        if self.kind == "text" and not isinstance(self.inputs, tuple):
            object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabeledData:
        indices = np.asarray(indices, dtype=np.int64)
        if self.kind == "text":
            assert isinstance(self.inputs, tuple)
            inputs: np.ndarray | tuple[str, ...] = tuple(self.inputs[i] for i in indices)
        else:
            assert isinstance(self.inputs, np.ndarray)
            inputs = self.inputs[indices]
        return LabeledData(kind=self.kind, inputs=inputs, labels=self.labels[indices])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset with its train and test splits and class names."""

    name: str
    train: LabeledData
    test: LabeledData
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def kind(self) -> DataKind:
        return self.train.kind


@dataclass(frozen=True)
class FederatedData:
    """The federated view of a dataset.

    ``private`` is the pool that clients draw from; ``client_indices[k]`` indexes
    into it. ``public`` is a server-held split that no client ever sees (used by
    federated pre-training with an adaptive switch, arXiv 2305.11414 section 3).
    """

    dataset: DatasetSplits
    private: LabeledData
    public: LabeledData | None
    test: LabeledData
    client_indices: tuple[np.ndarray, ...]
    label_histograms: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def client_data(self, client: int) -> LabeledData:
        return self.private.subset(self.client_indices[client])


def label_histogram(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """Count of each class in ``labels``."""
    return tuple(int(c) for c in np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes))
