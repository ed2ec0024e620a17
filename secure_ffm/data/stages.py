"""The data of a continual run: a sequence of stages over the same clients (``[continual]``, docs/continual.md).

Every dataset the stages name is loaded and federated over ``data.num_clients`` clients with the ``[data]``
settings (its own partition); the pools are concatenated into one :class:`~secure_ffm.data.base.FederatedData`, so a
client is one index set into one encoded pool and keeps its identity across stages. Each :class:`StageData` then
says which of a client's examples arrive in that stage:

- ``dataset``: the stage's dataset (domain-incremental: a new corpus with the same classes);
- ``classes``: only those labels (class-incremental);
- ``release``: the next share of each client's examples of that dataset, in a seeded order (data-incremental:
  new private data arriving at the edge).

The three combine. A stage's test set is its dataset's test split restricted to its classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from secure_ffm.config import Config, StageConfig
from secure_ffm.data.base import DatasetSplits, FederatedData, LabeledData, label_histogram
from secure_ffm.data.split import derive_rng
from secure_ffm.errors import ConfigError


@dataclass(frozen=True)
class StageData:
    """Which examples of the run's pools belong to one stage."""

    index: int
    name: str
    rounds: int
    first_round: int
    last_round: int
    dataset: str
    classes: tuple[int, ...] | None
    """Label ids of the stage (class-incremental), None: every class."""
    release: float
    client_indices: tuple[np.ndarray, ...]
    """Client ``k``'s examples of this stage, indices into :attr:`FederatedData.private`."""
    test_indices: np.ndarray
    """The stage's test examples, indices into :attr:`FederatedData.test`."""

    def covers(self, round: int) -> bool:
        return self.first_round <= round <= self.last_round

    def describe(self, class_names: Sequence[str]) -> dict[str, object]:
        """The stage as ``summary.json`` lists it."""
        return {
            "name": self.name,
            "index": self.index,
            "rounds": self.rounds,
            "first_round": self.first_round,
            "last_round": self.last_round,
            "dataset": self.dataset,
            "classes": [class_names[c] for c in self.classes] if self.classes is not None else None,
            "release": self.release,
            "train_examples": int(sum(len(ix) for ix in self.client_indices)),
            "test_examples": int(len(self.test_indices)),
        }


def stage_at(stages: Sequence[StageData], round: int) -> StageData:
    """The stage that round ``round`` belongs to."""
    for stage in stages:
        if stage.covers(round):
            return stage
    raise ValueError(f"round {round} is in no stage (the stages cover rounds 1..{stages[-1].last_round})")


def concatenate(parts: Sequence[LabeledData]) -> LabeledData:
    """One pool of several; images keep the first part's normalization (one model standardises every input alike)."""
    first = parts[0]
    labels = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    if first.kind == "text":
        inputs: np.ndarray | tuple[str, ...] = tuple(text for p in parts for text in p.inputs)
    else:
        inputs = np.concatenate([np.asarray(p.inputs) for p in parts])
    return LabeledData(kind=first.kind, inputs=inputs, labels=labels, normalization=first.normalization)


def _class_ids(stage: StageConfig, key: str, class_names: Sequence[str], dataset: str) -> tuple[int, ...] | None:
    if not stage.classes:
        return None
    ids = []
    for name in stage.classes:
        if name in class_names:
            ids.append(class_names.index(name))
        elif name.isdigit() and int(name) < len(class_names):
            ids.append(int(name))
        else:
            listing = ", ".join(f"{i}={n!r}" for i, n in enumerate(class_names))
            raise ConfigError(
                f"{key}.classes", f"{name!r} is not a class of {dataset!r} (the model's head has {listing})", "name them by name or id"
            )
    return tuple(sorted(ids))


def _load(config: Config, dataset: str, key: str) -> FederatedData:
    from secure_ffm.data.federate import load_federated_data, needs_labels

    data_config = dataclasses.replace(config.data, dataset=dataset)
    try:
        return load_federated_data(data_config, config.run.seed, labels=needs_labels(config))
    except ConfigError as error:
        if error.key != "data.dataset" or dataset == config.data.dataset:
            raise
        raise ConfigError(f"{key}.dataset", error.problem, error.fix) from error


def load_continual_data(config: Config) -> FederatedData:
    """The run's data when it has ``[continual]`` stages: every stage's dataset federated over the same clients,
    concatenated, with :attr:`FederatedData.stages`. Raises ConfigError naming the stage key on bad input."""
    continual = config.continual
    assert continual is not None
    names = [stage.dataset or config.data.dataset for stage in continual.stages]
    loaded: dict[str, FederatedData] = {}
    for index, name in enumerate(names):
        if name not in loaded:
            loaded[name] = _load(config, name, f"continual.stages[{index}]")
    first = loaded[names[0]]
    class_names = first.dataset.class_names
    for index, name in enumerate(names):
        other = loaded[name]
        if other.dataset.kind != first.dataset.kind:
            raise ConfigError(
                f"continual.stages[{index}].dataset", f"{name!r} holds {other.dataset.kind} data, {names[0]!r} {first.dataset.kind}"
            )
        if other.dataset.class_names != class_names:
            raise ConfigError(
                f"continual.stages[{index}].dataset",
                f"{name!r} has classes {list(other.dataset.class_names)}, the run's model {list(class_names)}",
                "domain-incremental stages must share one label set",
            )
    order = list(loaded)
    private_offset, test_offset, offset = {}, {}, [0, 0]
    for name in order:
        private_offset[name], test_offset[name] = offset[0], offset[1]
        offset[0] += len(loaded[name].private)
        offset[1] += len(loaded[name].test)
    private = concatenate([loaded[n].private for n in order])
    test = concatenate([loaded[n].test for n in order])
    num_clients = config.data.num_clients

    released: dict[str, float] = {}
    stages: list[StageData] = []
    first_round = 1
    for index, (stage, name) in enumerate(zip(continual.stages, names, strict=True)):
        key = f"continual.stages[{index}]"
        part = loaded[name]
        classes = _class_ids(stage, key, class_names, name)
        clients = []
        start = released.get(name, 0.0)
        end = start + stage.release
        if stage.release > 0 and end > 1.0 + 1e-9:
            raise ConfigError(f"{key}.release", f"the stages of {name!r} release {end:g} of each client's data, more than all of it")
        if stage.release > 0:
            released[name] = end
        for k in range(num_clients):
            own = np.asarray(part.client_indices[k], dtype=np.int64)
            if stage.release > 0:
                order_k = derive_rng(config.run.seed, f"continual-release/{name}/{k}").permutation(len(own))
                lo, hi = math.floor(start * len(own) + 0.5), math.floor(min(end, 1.0) * len(own) + 0.5)
                own = own[np.sort(order_k[lo:hi])]
            if classes is not None:
                own = own[np.isin(part.private.labels[own], classes)]
            clients.append(np.sort(own) + private_offset[name])
        test_ix = np.arange(len(part.test), dtype=np.int64)
        if classes is not None:
            test_ix = test_ix[np.isin(part.test.labels, classes)]
        if sum(len(ix) for ix in clients) == 0:
            raise ConfigError(key, f"gives the clients no training example ({name!r}, classes {list(stage.classes) or 'all'})")
        if len(test_ix) == 0:
            raise ConfigError(key, f"has no test example ({name!r}, classes {list(stage.classes) or 'all'})")
        stages.append(
            StageData(
                index=index,
                name=stage.label(index),
                rounds=stage.rounds,
                first_round=first_round,
                last_round=first_round + stage.rounds - 1,
                dataset=name,
                classes=classes,
                release=stage.release,
                client_indices=tuple(clients),
                test_indices=test_ix + test_offset[name],
            )
        )
        first_round += stage.rounds
    lifetime = tuple(np.unique(np.concatenate([s.client_indices[k] for s in stages])) for k in range(num_clients))
    splits = DatasetSplits(name="+".join(order), train=private, test=test, class_names=class_names, labeled=first.dataset.labeled)
    return FederatedData(
        dataset=splits,
        private=private,
        public=None,
        test=test,
        client_indices=lifetime,
        label_histograms=tuple(label_histogram(private.labels[ix], len(class_names)) for ix in lifetime),
        stages=tuple(stages),
    )
