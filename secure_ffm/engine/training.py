"""Local training and evaluation of a :class:`~secure_ffm.models.base.FederatedModel`.

Trainers are registered by name so that DP-SGD (Opacus) can replace the standard
loop without touching the client or the runner.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secure_ffm.config import ClientConfig
from secure_ffm.engine.optimizers import LocalOptimizer
from secure_ffm.engine.wire import NamedArrays, Scalar
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.models.objectives import EvalResult
from secure_ffm.privacy.noise import PrivateRandomness
from secure_ffm.registry import Registry

TRAINERS: Registry[type[LocalTrainer]] = Registry("local trainer")


class ClientDeclined(Exception):
    """A client does not take part in a round (e.g. its privacy budget is spent); it sends nothing."""


class QuadraticPenalty:
    """``1/2 * sum_i w_i (theta_i - a_i)^2`` over named trainable parameters: a pull towards anchors ``a`` with
    per-coordinate weights ``w`` (elastic weight consolidation, Kirkpatrick et al., PNAS 2017). It depends on no
    example, so under DP-SGD it applies after privatization (post-processing): a proximal step after each
    optimizer step (:meth:`proximal_step`)."""

    WEIGHT = "penalty.weight/"
    ANCHOR = "penalty.anchor/"
    """Prefixes of its arrays in :attr:`~secure_ffm.engine.wire.FitInstructions.arrays` (the server broadcasts them)."""

    def __init__(self, weights: Mapping[str, np.ndarray], anchors: Mapping[str, np.ndarray]) -> None:
        if set(weights) != set(anchors):
            raise ValueError("a penalty needs one weight and one anchor array per parameter")
        self.weights = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
        self.anchors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in anchors.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> QuadraticPenalty | None:
        """The penalty that ``arrays`` (a round's broadcast arrays) carry, or None."""
        weights = {k[len(cls.WEIGHT) :]: v for k, v in arrays.items() if k.startswith(cls.WEIGHT)}
        anchors = {k[len(cls.ANCHOR) :]: v for k, v in arrays.items() if k.startswith(cls.ANCHOR)}
        return cls(weights, anchors) if weights else None

    @classmethod
    def to_arrays(cls, weights: Mapping[str, np.ndarray], anchors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**{cls.WEIGHT + k: v for k, v in weights.items()}, **{cls.ANCHOR + k: v for k, v in anchors.items()}}

    def value(self, named: list[tuple[str, torch.nn.Parameter]]) -> float:
        total = 0.0
        for name, p in named:
            if name in self.weights:
                total += 0.5 * float((self.weights[name] * (p.detach() - self.anchors[name]) ** 2).sum())
        return total

    @torch.no_grad()
    def proximal_step(self, named: list[tuple[str, torch.nn.Parameter]], lr: float) -> None:
        """After an optimizer step: the penalty's proximal step ``p <- (p + lr * w * a) / (1 + lr * w)``, the exact
        minimizer of ``1/(2 lr) |p' - p|^2 + penalty(p')``. An explicit gradient step ``p -= lr * w * (p - a)``
        overshoots (and diverges) wherever ``lr * w > 2``, and importances are heavy-tailed; the proximal step is
        stable for every weight and tends to the anchor as ``w`` grows."""
        for name, p in named:
            if name in self.weights:
                w = lr * self.weights[name]
                p.copy_((p + w * self.anchors[name]) / (1.0 + w))


@dataclass
class LocalExtras:
    """What a round asks of local training beyond the plain objective (all optional)."""

    client_id: int | None = None
    """Whose training this is (a DP-SGD client's noise is calibrated for its own lifetime in a continual run)."""
    penalty: QuadraticPenalty | None = None
    """A data-independent pull towards anchors (EWC): a proximal step after every optimizer step."""
    importance: dict[str, np.ndarray] | None = None
    """When a dict, the trainer fills it with the mean over its steps of each parameter's squared step gradient
    (the privatized one under DP-SGD, so it costs no privacy; the data gradient, before any penalty)."""

    def record(self, named: list[tuple[str, torch.nn.Parameter]], steps: int, *, noise_variance: float = 0.0) -> None:
        """Fold the current gradients into :attr:`importance` (a running mean over ``steps`` steps so far).

        ``noise_variance``: the known variance of zero-mean noise in every coordinate (DP-SGD's ``(z C / B)^2``), taken
        off each squared gradient so that the mean estimates the squared noiseless gradient: E[(g + n)^2] = g^2 + var.
        Single estimates may be negative; the server clips the aggregate at 0."""
        if self.importance is None:
            return
        for name, p in named:
            if p.grad is None:
                continue
            squared = (p.grad.detach().double() ** 2).numpy() - noise_variance
            previous = self.importance.get(name)
            self.importance[name] = squared if previous is None else previous + (squared - previous) / (steps + 1)


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    steps: int
    train_loss: float
    seconds: float
    extra: Mapping[str, float] | None = None
    update: NamedArrays | None = None
    """What the client sends in place of its parameter difference (a trainer whose round is one noisy gradient sum,
    e.g. distributed DP-SGD); None: the trained parameters minus the global ones."""


def shuffled_batches(
    model: FederatedModel,
    encoded: EncodedData,
    indices: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[Batch]:
    """One epoch over ``indices`` in an order drawn from ``generator``."""
    order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    for start in range(0, len(order), batch_size):
        yield model.make_training_batch(encoded, order[start : start + batch_size], generator=generator)


def make_optimizer(params: list[torch.nn.Parameter], config: ClientConfig) -> LocalOptimizer:
    """``client.optimizer`` over ``params``: torch's update, without torch.optim's start-up cost (:mod:`~secure_ffm.engine.optimizers`)."""
    return LocalOptimizer(params, config)


class LocalTrainer(ABC):
    """Trains the model in place on one client's examples for one round."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    @abstractmethod
    def train(
        self,
        model: FederatedModel,
        encoded: EncodedData,
        indices: np.ndarray,
        *,
        fit_config: Mapping[str, Scalar],
        global_parameters: NamedArrays,
        generator: torch.Generator,
        state: MutableMapping[str, Any],
        randomness: PrivateRandomness | None = None,
        extras: LocalExtras | None = None,
    ) -> TrainResult:
        """Train in place; ``generator`` (seeded) orders batches, ``randomness`` (the client's secret) feeds DP noise and
        sampling; ``extras`` adds a penalty and asks for gradient importances."""


@TRAINERS.register("standard")
class StandardTrainer(LocalTrainer):
    """Mini-batch training with the configured optimizer, optional gradient-norm clipping and FedProx term."""

    def batches(self, model: FederatedModel, encoded: EncodedData, indices: np.ndarray, generator: torch.Generator) -> Iterator[Batch]:
        """``local_steps`` batches (cycling epochs) or ``local_epochs`` full epochs."""
        c = self.config
        if c.local_steps > 0:
            steps = 0
            while True:
                for batch in shuffled_batches(model, encoded, indices, c.batch_size, generator):
                    yield batch
                    steps += 1
                    if steps == c.local_steps:
                        return
        else:
            for _ in range(c.local_epochs):
                yield from shuffled_batches(model, encoded, indices, c.batch_size, generator)

    def train(
        self,
        model: FederatedModel,
        encoded: EncodedData,
        indices: np.ndarray,
        *,
        fit_config: Mapping[str, Scalar],
        global_parameters: NamedArrays,
        generator: torch.Generator,
        state: MutableMapping[str, Any],
        randomness: PrivateRandomness | None = None,
        extras: LocalExtras | None = None,
    ) -> TrainResult:
        start = time.perf_counter()
        extras = extras or LocalExtras()
        named = model.trainable_named_parameters()
        params = [p for _, p in named]
        optimizer = make_optimizer(params, self.config)
        mu = float(fit_config.get("proximal_mu", 0.0))
        anchors = [torch.from_numpy(global_parameters[name]) for name, _ in named] if mu > 0 else []
        model.module.train()
        total_loss, total_seen, steps = 0.0, 0, 0
        for batch in self.batches(model, encoded, indices, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(batch)
            objective = loss
            if mu > 0:
                proximal = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                objective = loss + 0.5 * mu * proximal
            objective.backward()
            extras.record(named, steps)
            if self.config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            optimizer.step()
            if extras.penalty is not None:
                extras.penalty.proximal_step(named, self.config.lr)
            total_loss += float(loss.detach()) * len(batch)
            total_seen += len(batch)
            steps += 1
        return TrainResult(
            num_examples=len(indices),
            steps=steps,
            train_loss=total_loss / max(total_seen, 1),
            seconds=time.perf_counter() - start,
        )


def build_trainer(config: ClientConfig) -> LocalTrainer:
    return TRAINERS.get(config.trainer, key="client.trainer")(config)


@torch.no_grad()
def evaluate(model: FederatedModel, encoded: EncodedData, indices: np.ndarray | None = None, *, batch_size: int = 128) -> EvalResult:
    """The model objective's held-out metrics on ``encoded`` (or its ``indices``): for classification mean
    cross-entropy, accuracy and macro F1; for MLM masked-token loss, accuracy and perplexity."""
    if indices is None:
        indices = np.arange(len(encoded))
    model.module.eval()
    tally = model.objective.tally()
    size = max(1, min(batch_size, model.objective.max_eval_batch))
    for start in range(0, len(indices), size):
        batch = model.make_batch(encoded, indices[start : start + size])
        tally.add(model.module(**batch.inputs), batch.labels)
    return tally.result()
