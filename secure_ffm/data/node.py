"""A node's own data: what an institution trains on when its examples never leave its machine.

On a deployment (:mod:`secure_ffm.flower`) a SuperNode may hold its data itself (``--node-config "data=/path"``) instead
of a partition of the configured dataset. The node then needs nothing of the server's data but its
:class:`DataSchema`: the kind of data, the class names, the image shape and the pixel normalization that the run's model
is built for. The server sends it with the first message (``hello``); it reveals the run's label space and input
format, which every participant must know anyway, and nothing about any example.

:func:`load_node_data` reads the node's path with the loaders of ``data.dataset`` (a table of texts, a ``.npz`` file or a
folder of images, a ``.txt`` corpus, ``hf:<folder>``): *every* example of the source trains the client (a source that
comes with a test split contributes both splits: the node has no use for held-out data, the server evaluates). Labels
are mapped to the run's class ids by name, so a node may hold any subset of the classes, but a class the run does not
know is refused. :func:`node_federated_data` wraps the examples as the run's data seen from that node: its client holds
all of them, the other clients none.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.base import UNLABELED_CLASS_NAMES, DatasetSplits, FederatedData, LabeledData, without_labels
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.engine.codec import wire_record
from secure_ffm.errors import ConfigError

NODE_DATA_KEY = "data"
"""The SuperNode ``--node-config`` key of a node's own data path."""
NODE_DATA_ERROR_KEY = "node-config data"
"""How errors name it (``data.dataset`` is the server's)."""


@wire_record
@dataclasses.dataclass(frozen=True)
class DataSchema:
    """What a node must know of the run's data to build its model: no example, only the format and label space.

    ``image_shape`` is ``(channels, height, width)`` and ``mean``/``std`` the pixel normalization (images only; empty for
    text)."""

    name: str
    kind: str
    class_names: tuple[str, ...]
    labeled: bool
    image_shape: tuple[int, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("image", "text"):
            raise ValueError(f"kind must be 'image' or 'text', got {self.kind!r}")
        names = tuple(self.class_names)
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"class_names must be distinct strings, got {self.class_names!r}")
        shape = tuple(int(v) for v in self.image_shape)
        if self.kind == "image" and (len(shape) != 3 or min(shape) < 1):
            raise ValueError(f"an image schema needs image_shape (channels, height, width), got {self.image_shape!r}")
        if self.kind == "text" and (shape or self.mean or self.std):
            raise ValueError("a text schema has no image shape or normalization")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.mean or self.std:
            ImageNormalization(self.mean, self.std)  # validates: one finite mean and positive std per channel

    @classmethod
    def of(cls, splits: DatasetSplits) -> DataSchema:
        """The schema of the run's dataset (on the server)."""
        norm = splits.normalization
        return cls(
            name=splits.name,
            kind=splits.kind,
            class_names=tuple(splits.class_names),
            labeled=bool(splits.labeled),
            image_shape=tuple(splits.image_shape or ()),
            mean=norm.mean if norm is not None else (),
            std=norm.std if norm is not None else (),
        )

    @property
    def normalization(self) -> ImageNormalization | None:
        return ImageNormalization(self.mean, self.std) if self.mean else None


def _concatenate(first: LabeledData, second: LabeledData) -> LabeledData:
    if not len(second):
        return first
    if first.kind == "text":
        inputs: np.ndarray | tuple[str, ...] = tuple(first.inputs) + tuple(second.inputs)
    else:
        inputs = np.concatenate([np.asarray(first.inputs), np.asarray(second.inputs)])
    return LabeledData(first.kind, inputs, np.concatenate([first.labels, second.labels]), first.normalization)


def load_node_data(config: DataConfig, path: str, schema: DataSchema, *, seed: int) -> LabeledData:
    """Every example at ``path`` (read like ``data.dataset``, with the other ``[data]`` keys), labelled with the run's ids.

    Raises
    ------
    ConfigError
        Naming the node config key ``data``: the path is missing or unreadable, holds another kind of data or image size
        than the run's, no examples, or classes the run does not have.
    """
    from secure_ffm.data.load import load_dataset_splits

    where = Path(path).expanduser()
    if not path or not (where.exists() or path.startswith("hf:")):
        raise ConfigError(
            NODE_DATA_ERROR_KEY,
            f"this node's data path {path!r} does not exist",
            f'start the SuperNode with --node-config "{NODE_DATA_KEY}=/path/to/its/data" (relative paths start from {Path.cwd()})',
        )
    node_config = dataclasses.replace(
        config, dataset=str(path) if path.startswith("hf:") else str(where), max_train_examples=0, max_test_examples=0
    )
    try:
        splits = load_dataset_splits(node_config, seed)
    except ConfigError as error:
        if error.key != "data.dataset":
            raise
        raise ConfigError(NODE_DATA_ERROR_KEY, error.problem, error.fix) from None
    if splits.kind != schema.kind:
        raise ConfigError(
            NODE_DATA_ERROR_KEY,
            f"{path!r} holds {splits.kind} data but the run trains on {schema.kind} data",
            f"give this node {schema.kind} data",
        )
    examples = _concatenate(splits.train, splits.test)
    if not len(examples):
        raise ConfigError(NODE_DATA_ERROR_KEY, f"{path!r} holds no examples", "give this node a source with at least one example")
    if schema.kind == "image":
        if tuple(examples.image_shape) != schema.image_shape:
            raise ConfigError(
                NODE_DATA_ERROR_KEY,
                f"{path!r} holds images of shape {examples.image_shape} (channels, height, width) "
                f"but the run's model takes {schema.image_shape}",
                "give this node images of the run's size and colour (or set data.image_size in the config)",
            )
        examples = dataclasses.replace(examples, normalization=schema.normalization)  # the run's, not the node's own statistics
    if not schema.labeled:
        return without_labels(examples)
    if not splits.labeled:
        raise ConfigError(NODE_DATA_ERROR_KEY, f"{path!r} is unlabeled, but the run trains a classifier", "give this node labeled examples")
    unknown = [name for name in splits.class_names if name not in schema.class_names]
    if unknown:
        raise ConfigError(
            NODE_DATA_ERROR_KEY,
            f"{path!r} has classes {', '.join(map(repr, unknown))} that the run does not "
            f"(its classes: {', '.join(map(repr, schema.class_names))})",
            "label this node's examples with the run's class names",
        )
    mapping = np.asarray([schema.class_names.index(name) for name in splits.class_names], dtype=np.int64)
    return dataclasses.replace(examples, labels=mapping[examples.labels])


def node_federated_data(schema: DataSchema, examples: LabeledData, *, client_id: int, num_clients: int) -> FederatedData:
    """The run's data as one node sees it: client ``client_id`` holds ``examples``, every other client nothing, no test set."""
    empty_inputs: np.ndarray | tuple[str, ...] = () if schema.kind == "text" else np.asarray(examples.inputs)[:0]
    empty = LabeledData(schema.kind, empty_inputs, np.zeros(0, dtype=np.int64), examples.normalization)  # type: ignore[arg-type]
    class_names = schema.class_names if schema.labeled else UNLABELED_CLASS_NAMES
    splits = DatasetSplits(name=schema.name, train=examples, test=empty, class_names=class_names, labeled=schema.labeled)
    indices = tuple(np.arange(len(examples)) if k == client_id else np.zeros(0, dtype=np.int64) for k in range(num_clients))
    return FederatedData(dataset=splits, private=examples, public=None, test=empty, client_indices=indices)


__all__ = ["NODE_DATA_ERROR_KEY", "NODE_DATA_KEY", "DataSchema", "load_node_data", "node_federated_data"]
