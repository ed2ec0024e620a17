"""Typed containers for labelled data and its federated split.

Images are kept as one ``uint8`` array, ``(N, H, W)`` greyscale or ``(N, H, W, 3)`` RGB, with the source's
:class:`~secure_ffm.data.normalization.ImageNormalization` (how a model standardises them);
texts as a tuple of strings.
Clients hold only index arrays into the shared private training pool, so a
federation of 1,000 clients costs 1,000 small integer arrays, not 1,000 copies.

Unlabeled text (a corpus for masked-language-model pre-training) is a
:class:`DatasetSplits` with ``labeled=False``: every label is 0 and the one class
name is ``"text"`` (:data:`UNLABELED_CLASS_NAMES`), so partitioning and
subsetting work unchanged, and :func:`require_labels` refuses it where a
classifier would train on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import ConfigError

logger = logging.getLogger(__name__)

DataKind = Literal["image", "text"]

UNLABELED_CLASS_NAMES = ("text",)
"""The class names of unlabeled text: one pseudo-class that every example belongs to (label 0)."""

ImageShape = tuple[int, int, int]
"""``(channels, height, width)`` of the images a dataset holds and an image model reads."""

COLOUR_CHANNELS = 3
"""Channels of a colour image (RGB, the last axis of a ``(N, H, W, 3)`` array)."""


@dataclass(frozen=True)
class LabeledData:
    """A set of labelled examples of one kind.

    Parameters
    ----------
    kind:
        ``"image"`` (``inputs`` is a ``uint8`` array of shape ``(N, H, W)``, greyscale, or
        ``(N, H, W, 3)``, RGB) or
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
        if self.kind == "image":
            shape = np.shape(self.inputs)
            if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] == COLOUR_CHANNELS)):
                raise ValueError(f"images must be an array (N, H, W) or (N, H, W, {COLOUR_CHANNELS}), got shape {shape}")
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> ImageShape:
        """Images only: ``(channels, height, width)`` of one image (1 channel for ``(N, H, W)`` arrays)."""
        if self.kind != "image":
            raise ValueError("text data has no image shape")
        shape = np.shape(self.inputs)
        return (shape[3] if len(shape) == 4 else 1, shape[1], shape[2])

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
    """A dataset with its train and test splits and class names (and, for images, their normalization).

    ``labeled`` is ``False`` for unlabeled text (a pre-training corpus, or a labeled set read with
    ``data.label_column = ""``): its labels are all 0 and ``class_names`` is :data:`UNLABELED_CLASS_NAMES`.
    """

    name: str
    train: LabeledData
    test: LabeledData
    class_names: tuple[str, ...]
    labeled: bool = True

    def __post_init__(self) -> None:
        if self.train.normalization != self.test.normalization:
            raise ValueError(f"train and test splits are normalized differently: {self.train.normalization} and {self.test.normalization}")
        if not self.labeled:
            if self.train.kind != "text":
                raise ValueError("only text can be unlabeled")
            if self.class_names != UNLABELED_CLASS_NAMES or self.train.labels.any() or self.test.labels.any():
                raise ValueError(f"unlabeled data has class names {UNLABELED_CLASS_NAMES} and every label 0")
        if self.train.kind == "image" and self.train.image_shape != self.test.image_shape:
            raise ValueError(f"train and test images differ in shape: {self.train.image_shape} and {self.test.image_shape}")

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

    @property
    def image_shape(self) -> ImageShape | None:
        """``(channels, height, width)`` of the images (what an image model is built for); ``None`` for text."""
        return self.train.image_shape if self.kind == "image" else None


@dataclass(frozen=True)
class FederatedData:
    """The federated view of a dataset.

    ``private`` is the pool that clients draw from; ``client_indices[k]`` indexes
    into it. ``public`` is server-held data that no client ever sees (used by
    federated pre-training with an adaptive switch, arXiv 2305.11414 section 3): a
    share of the training split (``data.public_fraction``) or a separate dataset
    (``[public_data]``).
    """

    dataset: DatasetSplits
    private: LabeledData
    public: LabeledData | None
    test: LabeledData
    client_indices: tuple[np.ndarray, ...]
    label_histograms: tuple[tuple[int, ...], ...] = field(default=())
    stages: tuple[Any, ...] = field(default=())
    """A continual run's :class:`~secure_ffm.data.stages.StageData` (``[continual]``); then ``client_indices[k]`` is
    client ``k``'s data over its whole lifetime, the union of its stages'. Empty for an ordinary run."""

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def client_data(self, client: int) -> LabeledData:
        return self.private.subset(self.client_indices[client])


def unlabeled_text(name: str, train: tuple[str, ...], test: tuple[str, ...]) -> DatasetSplits:
    """Train and test texts without labels, as :class:`DatasetSplits` (``labeled=False``, every label 0)."""
    return DatasetSplits(
        name=name,
        train=LabeledData(kind="text", inputs=train, labels=np.zeros(len(train), dtype=np.int64)),
        test=LabeledData(kind="text", inputs=test, labels=np.zeros(len(test), dtype=np.int64)),
        class_names=UNLABELED_CLASS_NAMES,
        labeled=False,
    )


def without_labels(data: LabeledData) -> LabeledData:
    """The same examples with every label 0 (how unlabeled text is held)."""
    return LabeledData(kind=data.kind, inputs=data.inputs, labels=np.zeros(len(data), dtype=np.int64), normalization=data.normalization)


def drop_labels(splits: DatasetSplits, *, key: str = "data.label_column") -> DatasetSplits:
    """A text dataset read as unlabeled text: its labels dropped (all 0), ``labeled=False``.

    Raises
    ------
    ConfigError
        Naming ``key`` for image data: only text can be used unlabeled (for masked-language-model pre-training).
    """
    if not splits.labeled:
        return splits
    if splits.kind != "text":
        raise ConfigError(
            key,
            f'is "" (no labels), but {splits.name} holds images',
            "unlabeled data is text only (masked-language-model pre-training); name the label column of an image dataset",
        )
    return DatasetSplits(
        name=splits.name,
        train=without_labels(splits.train),
        test=without_labels(splits.test),
        class_names=UNLABELED_CLASS_NAMES,
        labeled=False,
    )


def require_labels(splits: DatasetSplits, *, key: str = "data.dataset") -> None:
    """Refuse unlabeled data where a classifier trains on it (``model.objective = "classification"``).

    The check belongs where data and model meet: the run calls it unless its objective is
    masked-language modelling, which ignores labels.

    Raises
    ------
    ConfigError
        Naming ``key`` when ``splits.labeled`` is ``False``.
    """
    if not splits.labeled:
        raise ConfigError(
            key,
            f"holds unlabeled text ({splits.name}), which a classifier cannot train on",
            'set model.objective = "mlm" for pre-training, or give a labeled dataset',
        )


def label_histogram(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """Count of each class in ``labels``."""
    return tuple(int(c) for c in np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes))


def read_text_file(path: Path) -> str:
    """A text file's content: UTF-8, or Latin-1 (with a warning) when it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s is not UTF-8; reading it as Latin-1", path)
        return raw.decode("latin-1")
