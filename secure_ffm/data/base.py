"""Typed containers for labelled data and its federated split.

Images are kept as one ``uint8`` array ``(N, H, W)``, with the source's
:class:`~secure_ffm.data.normalization.ImageNormalization` (how a model standardises them);
texts as a tuple of strings.
Clients hold only index arrays into the shared private training pool, so a
federation of 1,000 clients costs 1,000 small integer arrays, not 1,000 copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from secure_ffm.data.normalization import ImageNormalization

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
    normalization:
        Images only: the source's per-channel pixel mean and std, which an image model
        standardises with (:class:`~secure_ffm.models.vision.ImageModel`). ``None`` when the
        images do not say (e.g. built by hand); subsets keep it.
    """

    kind: DataKind
    inputs: np.ndarray | tuple[str, ...]
    labels: np.ndarray
    normalization: ImageNormalization | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "text"):
            raise ValueError(f"kind must be 'image' or 'text', got {self.kind!r}")
        if self.kind == "text" and self.normalization is not None:
            raise ValueError("text data has no pixel normalization")
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
        return LabeledData(kind=self.kind, inputs=inputs, labels=self.labels[indices], normalization=self.normalization)


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset with its train and test splits and class names (and, for images, their normalization)."""

    name: str
    train: LabeledData
    test: LabeledData
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.train.normalization != self.test.normalization:
            raise ValueError(f"train and test splits are normalized differently: {self.train.normalization} and {self.test.normalization}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def kind(self) -> DataKind:
        return self.train.kind

    @property
    def normalization(self) -> ImageNormalization | None:
        """How an image model standardises this dataset's pixels (the train split's; ``None`` for text)."""
        return self.train.normalization


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
