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
import torch.nn.functional as F

from secure_ffm.config import ClientConfig
from secure_ffm.engine.wire import NamedArrays, Scalar
from secure_ffm.metrics import accuracy, macro_f1
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.privacy.noise import PrivateRandomness
from secure_ffm.registry import Registry

TRAINERS: Registry[type[LocalTrainer]] = Registry("local trainer")


class ClientDeclined(Exception):
    """A client does not take part in a round (e.g. its privacy budget is spent); it sends nothing."""


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    steps: int
    train_loss: float
    seconds: float
    extra: Mapping[str, float] | None = None


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
        yield model.make_batch(encoded, order[start : start + batch_size])


def make_optimizer(params: list[torch.nn.Parameter], config: ClientConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


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
    ) -> TrainResult:
        """Train in place; ``generator`` (seeded) orders batches, ``randomness`` (the client's secret) feeds DP noise and sampling."""


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
    ) -> TrainResult:
        start = time.perf_counter()
        named = model.trainable_named_parameters()
        params = [p for _, p in named]
        optimizer = make_optimizer(params, self.config)
        mu = float(fit_config.get("proximal_mu", 0.0))
        anchors = [torch.from_numpy(global_parameters[name]) for name, _ in named] if mu > 0 else []
        model.module.train()
        total_loss, total_seen, steps = 0.0, 0, 0
        for batch in self.batches(model, encoded, indices, generator):
            optimizer.zero_grad(set_to_none=True)
            logits = model.module(**batch.inputs)
            loss = F.cross_entropy(logits, batch.labels)
            objective = loss
            if mu > 0:
                proximal = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                objective = loss + 0.5 * mu * proximal
            objective.backward()
            if self.config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            optimizer.step()
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


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    num_examples: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
        }


@torch.no_grad()
def evaluate(model: FederatedModel, encoded: EncodedData, indices: np.ndarray | None = None, *, batch_size: int = 128) -> EvalResult:
    """Mean cross-entropy, accuracy and macro F1 of ``model`` on ``encoded`` (or its ``indices``)."""
    if indices is None:
        indices = np.arange(len(encoded))
    model.module.eval()
    losses, predictions, labels = [], [], []
    for start in range(0, len(indices), batch_size):
        batch = model.make_batch(encoded, indices[start : start + batch_size])
        logits = model.module(**batch.inputs)
        losses.append(float(F.cross_entropy(logits, batch.labels, reduction="sum")))
        predictions.append(logits.argmax(dim=-1).numpy())
        labels.append(batch.labels.numpy())
    y_pred = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    y_true = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    n = len(y_true)
    return EvalResult(
        loss=sum(losses) / n if n else float("nan"),
        accuracy=accuracy(y_true, y_pred),
        macro_f1=macro_f1(y_true, y_pred),
        num_examples=n,
    )
