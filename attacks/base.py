"""The attack contract: a threat model, what the server observed, and what an attack reconstructs.

The split follows breaching (Geiping et al.): a *case* (model, data, client, server)
produces an :class:`Observation` — what an honest-but-curious server sees and knows —;
an :class:`Attack` turns it into a :class:`Reconstruction`; metrics score that against
the :class:`GroundTruth`, which the attack never sees.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.engine.wire import NamedArrays
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import FederatedModel
from secure_ffm.registry import Registry, nearest

OBSERVATIONS = ("gradient", "update", "aggregate")
"""What the attacker observes: one client's gradient of one step, one client's whole local
update after several steps (FedAvg), or only the aggregate of n clients (secure aggregation)."""


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker (the server) observes and knows.

    The attacker always knows the architecture and the global weights the client started from.
    """

    observes: str = "gradient"
    """``gradient``, ``update`` or ``aggregate`` (see :data:`OBSERVATIONS`)."""
    knows_labels: bool = False
    """The true labels are given to the attack (else it must infer them, e.g. with iDLG)."""
    knows_batch_size: bool = True
    """The number of examples behind the observation is known."""
    knows_training: bool = True
    """For ``update``/``aggregate``: the local steps, local batch size and learning rate are known."""
    server: str = "honest-but-curious"
    """Only honest-but-curious servers are modelled: the server follows the protocol and does not tamper with the model."""

    def __post_init__(self) -> None:
        if self.observes not in OBSERVATIONS:
            hint = nearest(self.observes, OBSERVATIONS)
            raise ConfigError(
                "threat_model.observes",
                f"unknown value {self.observes!r}",
                f"did you mean {hint!r}?" if hint else f"choose one of: {', '.join(OBSERVATIONS)}",
            )
        if self.server != "honest-but-curious":
            raise ConfigError("threat_model.server", f"unsupported server {self.server!r}", 'only "honest-but-curious" is modelled')

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TrainingSetup:
    """How the observed client trained (FedSGD: one step over the whole batch)."""

    num_examples: int
    """Examples behind this client's observation (the batch size for a single gradient)."""
    local_steps: int = 1
    local_batch_size: int = 0
    """Examples per local step; 0 means all of them (full-batch steps)."""
    learning_rate: float = 0.1
    """Plain SGD step size of the local steps (the FedAvg attack simulates these steps)."""
    num_clients: int = 1
    """Clients summed into the observation (> 1 for ``aggregate``)."""

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ConfigError("setup.num_examples", f"must be at least 1, got {self.num_examples}")
        if self.local_steps < 1:
            raise ConfigError("setup.local_steps", f"must be at least 1, got {self.local_steps}")
        if self.local_batch_size < 0:
            raise ConfigError("setup.local_batch_size", f"must be >= 0, got {self.local_batch_size}", "use 0 for full-batch steps")
        if not self.learning_rate > 0:
            raise ConfigError("setup.learning_rate", f"must be positive, got {self.learning_rate}")
        if self.num_clients < 1:
            raise ConfigError("setup.num_clients", f"must be at least 1, got {self.num_clients}")

    @property
    def step_batch_size(self) -> int:
        return self.local_batch_size or self.num_examples

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Observation:
    """What the server observed in one round for one client (or the aggregate), and what it knows.

    ``observed`` holds, per trainable parameter name: for ``gradient``, the gradient of the mean
    cross-entropy over the batch; for ``update`` and ``aggregate``, the parameter delta
    (local model minus global model; for ``aggregate`` the example-weighted mean over clients).
    ``model`` has the global parameters loaded; attacks must leave them as they found them.
    """

    threat_model: ThreatModel
    setup: TrainingSetup
    model: FederatedModel
    parameters: NamedArrays
    observed: NamedArrays
    data_kind: str
    """``image`` or ``text``."""
    input_shape: tuple[int, ...]
    """Shape of one example: ``(1, 28, 28)`` for images, ``(sequence_length,)`` for token ids (TAG assumes it known)."""
    labels: torch.Tensor | None = None
    """The true labels, present only when ``threat_model.knows_labels``."""
    extras: dict[str, Any] = field(default_factory=dict)
    """E.g. ``attention_mask`` for text (which positions are padding: the length is assumed known)."""

    @property
    def batch_size(self) -> int:
        return self.setup.num_examples

    def observed_tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.ascontiguousarray(value)).float() for name, value in self.observed.items()}


@dataclass
class GroundTruth:
    """The client's true examples (never given to an attack; used only to score it)."""

    inputs: dict[str, torch.Tensor]
    """A :class:`~secure_ffm.models.base.Batch`'s inputs: ``pixels`` (normalized) or ``input_ids`` etc."""
    labels: torch.Tensor
    texts: list[str] | None = None


@dataclass
class Reconstruction:
    """An attack's output: inputs in the model's input space (normalized pixels, or token ids)."""

    inputs: torch.Tensor
    labels: torch.Tensor | None = None
    texts: list[str] | None = None
    seconds: float = 0.0
    iterations: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    normalization: ImageNormalization | None = None
    """Images: the attacked model's pixel normalization (of ``inputs`` and of the ground truth's
    pixels), which the metrics and pictures undo; set by the image attacks from ``observation.model``."""


@dataclass(frozen=True)
class Budget:
    """How long an attack may run: at most ``max_iterations`` optimizer steps and ``max_seconds`` wall time."""

    max_iterations: int = 2000
    max_seconds: float = 0.0
    """0 means no time limit."""
    progress: Callable[[int, int], None] | None = None
    """Called as ``progress(done, total)`` (the CLI draws a progress bar with it)."""

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ConfigError("budget.max_iterations", f"must be at least 1, got {self.max_iterations}")
        if self.max_seconds < 0:
            raise ConfigError("budget.max_seconds", f"must be >= 0, got {self.max_seconds}", "use 0 for no limit")

    def clock(self) -> BudgetClock:
        return BudgetClock(self)


class BudgetClock:
    """Tracks one attack's spending against its :class:`Budget`."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.start = time.perf_counter()
        self.iterations = 0

    def tick(self, total: int | None = None) -> bool:
        """Count one iteration; False once the iteration or time budget is spent."""
        self.iterations += 1
        if self.budget.progress is not None:
            self.budget.progress(self.iterations, total or self.budget.max_iterations)
        if self.iterations >= self.budget.max_iterations:
            return False
        return not (self.budget.max_seconds and self.elapsed() >= self.budget.max_seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class AttackSettings:
    """Base class of every attack's settings; subclasses are frozen dataclasses validated in ``__post_init__``."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, section: str = "attack") -> AttackSettings:
        """Build from a TOML table, rejecting unknown keys with the nearest valid one."""
        valid = [f.name for f in fields(cls)]
        for key in raw:
            if key not in valid:
                hint = nearest(key, valid)
                raise ConfigError(
                    f"{section}.{key}", "unknown key", f"did you mean {section}.{hint}?" if hint else f"valid keys: {', '.join(valid)}"
                )
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Attack(ABC):
    """Reconstructs a client's data from an :class:`Observation`."""

    name: ClassVar[str] = ""
    data_kinds: ClassVar[tuple[str, ...]] = ("image", "text")
    observes: ClassVar[tuple[str, ...]] = OBSERVATIONS
    settings_class: ClassVar[type[AttackSettings]] = AttackSettings
    paper: ClassVar[str] = ""

    def __init__(self, settings: AttackSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_class()

    def check(self, observation: Observation) -> None:
        """Raise ConfigError when this attack does not apply to ``observation``."""
        if observation.data_kind not in self.data_kinds:
            raise ConfigError(
                "attack.name",
                f"{self.name} attacks {'/'.join(self.data_kinds)} models, not {observation.data_kind}",
                "choose an attack for this data kind",
            )
        if observation.threat_model.observes not in self.observes:
            raise ConfigError(
                "threat_model.observes",
                f"{self.name} does not handle observations of kind {observation.threat_model.observes!r}",
                f"use one of: {', '.join(self.observes)}",
            )

    @abstractmethod
    def reconstruct(self, observation: Observation, *, budget: Budget, generator: torch.Generator) -> Reconstruction:
        """Reconstruct the examples behind ``observation`` (seeded by ``generator``; restores the model's parameters)."""


ATTACKS: Registry[type[Attack]] = Registry("attack")
"""The attacks by name. The built-ins register here lazily (a module is imported on the first lookup of its attack),
so the ``secure-ffm`` CLI lists its commands without importing torch; a new attack is one file plus one line here."""
for _name, _target in (
    ("dlg", "attacks.dlg:DLG"),
    ("idlg", "attacks.dlg:IDLG"),
    ("inverting-gradients", "attacks.inverting:InvertingGradients"),
    ("inverting-gradients-fedavg", "attacks.inverting:InvertingGradientsFedAvg"),
    ("lamp", "attacks.lamp:Lamp"),
    ("tag", "attacks.tag:Tag"),
    ("embedding-leakage", "attacks.text_embedding:EmbeddingLeakage"),
):
    ATTACKS.register_lazy(_name, _target)


def build_attack(name: str, settings: Mapping[str, Any] | None = None) -> Attack:
    """The registered attack ``name`` with its settings from a TOML table."""
    cls = ATTACKS.get(name, key="attack.name")
    return cls(cls.settings_class.from_dict(settings or {}))
