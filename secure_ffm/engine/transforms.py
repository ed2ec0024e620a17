"""Client-side update transforms: what a client does to its update before it sends it.

DP-FedAvg clipping and noise shares, pruning, quantization and Soteria-style
perturbation are all transforms; they compose as an :class:`UpdatePipeline`
applied in order, after local training and before the aggregation protocol's
client-side encoding. Each receives an explicit generator keyed from the client's secret, never a global one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from secure_ffm.engine.wire import ClientUpdate, NamedArrays, Scalar
from secure_ffm.variants import TRANSFORMS

if TYPE_CHECKING:
    from secure_ffm.config import DefenseConfig
    from secure_ffm.models.base import EncodedData, FederatedModel
    from secure_ffm.privacy.noise import PrivateRandomness


@dataclass(frozen=True)
class TransformContext:
    """What a transform may use besides the update itself."""

    round: int
    client_id: int
    rng: np.random.Generator
    """Keyed from the client's secret (secure_ffm.privacy.noise): the server cannot reproduce it."""
    global_parameters: NamedArrays
    state: MutableMapping[str, Any] = field(default_factory=dict)
    """This client's persistent state (checkpointed with the run)."""
    config: Mapping[str, Scalar] = field(default_factory=dict)
    """The round's settings from the server (e.g. the current clip norm, the number of participants)."""
    model: FederatedModel | None = None
    """The client's model after local training (for defenses that need its representations, e.g. Soteria)."""
    encoded: EncodedData | None = None
    """The encoded example pool; the client's own examples are ``indices`` into it."""
    indices: np.ndarray | None = None
    randomness: PrivateRandomness | None = None
    """The client's secret randomness, for transforms that add DP noise (their own CSPRNG streams)."""


class UpdateTransform(ABC):
    """One step of the client's pre-send pipeline."""

    name: str = ""
    reads_examples: bool = False
    """Whether it reads the client's raw examples (not only the update): what it does with them is outside any DP
    guarantee, which covers the update the trainer privatized; a private run warns and ``privacy.json`` says so."""

    @classmethod
    def from_config(cls, config: DefenseConfig) -> UpdateTransform:
        """The transform a run's ``[defense]`` section describes (for transforms listed in ``defense.names``)."""
        return cls()

    @classmethod
    def label(cls, config: DefenseConfig) -> str:
        """How reports name this defense under ``config``, with its main setting (e.g. ``"prune 90%"``)."""
        return cls.name

    @abstractmethod
    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        """Return the transformed update (never modify ``update`` in place)."""


class UpdatePipeline:
    """Transforms applied in order; an empty pipeline sends the update unchanged."""

    def __init__(self, transforms: Iterable[UpdateTransform] = ()) -> None:
        self.transforms: tuple[UpdateTransform, ...] = tuple(transforms)

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        for transform in self.transforms:
            update = transform(update, context)
        return update

    def names(self) -> Sequence[str]:
        return [t.name or type(t).__name__ for t in self.transforms]

    def reading_examples(self) -> list[str]:
        """The names of the transforms that read the client's raw examples (:attr:`UpdateTransform.reads_examples`)."""
        return [t.name or type(t).__name__ for t in self.transforms if t.reads_examples]

    def __len__(self) -> int:
        return len(self.transforms)


def defense_labels(config: DefenseConfig) -> list[str]:
    """One short label per transform ``defense.names`` lists, each from its class (:meth:`UpdateTransform.label`)."""
    from secure_ffm.plugins import load_plugins

    if config.names:
        load_plugins()
    return [TRANSFORMS.get(name, key="defense.names").label(config) for name in config.names]


def build_defenses(config: DefenseConfig) -> UpdatePipeline:
    """The pipeline of the transforms ``defense.names`` lists (plugins such as ``defenses`` are loaded first)."""
    from secure_ffm.plugins import load_plugins

    if config.names:
        load_plugins()
    return UpdatePipeline(TRANSFORMS.get(name, key="defense.names").from_config(config) for name in config.names)
