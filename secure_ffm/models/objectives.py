"""What a model is trained to do: the ``[model] objective`` registry.

An :class:`Objective` owns the loss and the evaluation metrics, so that local training, DP-SGD (Opacus hooks and
ghost clipping), the server's public phases and evaluation never name a loss themselves:

- ``classification``: cross-entropy of class logits against integer labels; accuracy and macro F1.
- ``mlm``: masked-language-model pre-training (BERT, Devlin et al. 2019), the continued pre-training of FFM
  (Federated Foundation Models, arXiv 2305.11414, Sec. 3.1). The outputs are token logits ``(B, L, V)`` and the
  labels token ids ``(B, L)`` with ``-100`` on every position that was not masked. Each example's loss is the mean
  over its masked tokens and a batch's loss the mean over examples, so an example's gradient depends on that
  example only (DP-SGD's unit of privacy is the sequence, as in Opacus' ghost clipping of generative models).
  Metrics: the held-out masked-token loss (mean over masked tokens), its perplexity ``exp(loss)``, and the
  masked-token accuracy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from secure_ffm.metrics import accuracy, macro_f1
from secure_ffm.registry import Registry

IGNORE_INDEX = -100
"""Label of a token that is not predicted (transformers' and torch's convention)."""


@dataclass(frozen=True)
class EvalResult:
    """Held-out metrics of a model. ``macro_f1`` is ``None`` where it has no meaning (MLM); ``extra`` holds an
    objective's own metrics (``perplexity`` for MLM)."""

    loss: float
    accuracy: float
    macro_f1: float | None
    num_examples: int
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict[str, float | None]:
        values: dict[str, float | None] = {
            f"{prefix}loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
        }
        values.update({f"{prefix}{name}": value for name, value in self.extra.items()})
        return values


class Tally(ABC):
    """Accumulates one evaluation pass, batch by batch."""

    @abstractmethod
    def add(self, outputs: torch.Tensor, labels: torch.Tensor) -> None: ...

    @abstractmethod
    def result(self) -> EvalResult: ...


class Objective(ABC):
    """A training objective: per-example loss and evaluation."""

    name: ClassVar[str]
    reads_labels: ClassVar[bool] = True
    """Whether the dataset's class labels are the targets (classification); MLM ignores them."""
    max_eval_batch: ClassVar[int] = 1 << 30
    """Largest evaluation batch (MLM logits are batch x length x vocabulary floats)."""

    @abstractmethod
    def per_example_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shape ``(B,)``: each example's loss, depending on that example only."""

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch loss that is differentiated: the mean of :meth:`per_example_loss`."""
        return self.per_example_loss(outputs, labels).mean()

    @abstractmethod
    def tally(self) -> Tally:
        """A fresh accumulator for one evaluation pass."""


OBJECTIVES: Registry[Objective] = Registry("model objective")


class _ClassificationTally(Tally):
    def __init__(self) -> None:
        self.loss_sum, self.predictions, self.labels = 0.0, [], []

    def add(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += float(F.cross_entropy(outputs, labels, reduction="sum"))
        self.predictions.append(outputs.argmax(dim=-1).numpy())
        self.labels.append(labels.numpy())

    def result(self) -> EvalResult:
        y_pred = np.concatenate(self.predictions) if self.predictions else np.zeros(0, dtype=np.int64)
        y_true = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64)
        n = len(y_true)
        return EvalResult(
            loss=self.loss_sum / n if n else float("nan"),
            accuracy=accuracy(y_true, y_pred),
            macro_f1=macro_f1(y_true, y_pred),
            num_examples=n,
        )


class Classification(Objective):
    """Cross-entropy over class logits ``(B, K)`` against labels ``(B,)``."""

    name = "classification"

    def per_example_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels, reduction="none")

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels)

    def tally(self) -> Tally:
        return _ClassificationTally()


def masked_token_losses(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy ``(B, L)`` (0 where the label is ``IGNORE_INDEX``) and the mask of predicted tokens."""
    batch, length = labels.shape
    losses = F.cross_entropy(outputs.reshape(batch * length, -1), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return losses.view(batch, length), labels != IGNORE_INDEX


class _MaskedTokenTally(Tally):
    def __init__(self) -> None:
        self.loss_sum, self.tokens, self.correct, self.examples = 0.0, 0, 0, 0

    def add(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        losses, predicted = masked_token_losses(outputs, labels)
        self.loss_sum += float(losses.sum())
        self.tokens += int(predicted.sum())
        self.correct += int(((outputs.argmax(dim=-1) == labels) & predicted).sum())
        self.examples += int(labels.shape[0])

    def result(self) -> EvalResult:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        return EvalResult(
            loss=loss,
            accuracy=self.correct / self.tokens if self.tokens else float("nan"),
            macro_f1=None,
            num_examples=self.examples,
            extra={"perplexity": math.exp(min(loss, 700.0)) if self.tokens else float("nan"), "masked_tokens": float(self.tokens)},
        )


class MaskedLanguageModeling(Objective):
    """Masked-token cross-entropy: each example's mean over its masked tokens (0 for an example with none)."""

    name = "mlm"
    reads_labels = False
    max_eval_batch = 16

    def per_example_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses, predicted = masked_token_losses(outputs, labels)
        return losses.sum(dim=1) / predicted.sum(dim=1).clamp(min=1)

    def tally(self) -> Tally:
        return _MaskedTokenTally()


CLASSIFICATION = OBJECTIVES.register("classification")(Classification())
MASKED_LANGUAGE_MODELING = OBJECTIVES.register("mlm")(MaskedLanguageModeling())
