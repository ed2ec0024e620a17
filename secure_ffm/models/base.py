"""The model contract shared by local training, aggregation and (later) attacks.

A :class:`FederatedModel` owns one ``torch.nn.Module`` whose ``forward(**batch.inputs)``
returns class logits. Only its *trainable* parameters cross the wire, as named
``float32`` numpy arrays (for LoRA: the adapters plus the classification head).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secure_ffm.data.base import LabeledData
from secure_ffm.engine.wire import NamedArrays
from secure_ffm.models.objectives import CLASSIFICATION, Objective

HEAD = "head"
"""Every classifier's last layer is the module attribute ``head`` (its parameters ``head.weight``, ``head.bias``)."""


@dataclass(frozen=True)
class Batch:
    """Model inputs (keyword arguments of ``module.forward``) and labels: class ids ``(B,)``, or for masked language
    modeling token ids ``(B, L)`` with -100 where nothing is predicted.

    Every tensor in ``inputs`` has one row per example (Opacus needs per-sample
    ``position_ids``/``token_type_ids`` for BERT-family models).
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class EncodedData:
    """Data turned into model-ready form once (tokenized text, normalized images)."""

    tensors: dict[str, Any]
    """Per-example storage: images as uint8 codes of shape (N, C, H, W), or token-id arrays."""
    labels: torch.Tensor
    normalization: Any = None
    """Images: the normalization their batches are standardised with (the encoding model's, fixed at encoding)."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class FederatedModel(ABC):
    """A model whose trainable parameters are what a client sends and the server aggregates."""

    module: torch.nn.Module
    num_classes: int
    objective: Objective = CLASSIFICATION
    """What the model is trained for: its loss and its evaluation (:mod:`secure_ffm.models.objectives`)."""

    @abstractmethod
    def encode(self, data: LabeledData) -> EncodedData:
        """Tokenize or normalize ``data`` once, so that batching is cheap."""

    @abstractmethod
    def make_batch(self, encoded: EncodedData, indices: np.ndarray) -> Batch:
        """The batch of examples ``indices`` (text is padded to the longest in the batch)."""

    def make_training_batch(self, encoded: EncodedData, indices: np.ndarray, *, generator: torch.Generator) -> Batch:
        """The batch a training step uses: :meth:`make_batch`, plus what the objective draws per step (the random
        masks of masked language modeling, from ``generator``)."""
        return self.make_batch(encoded, indices)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The objective's mean loss of the module on ``batch`` (differentiable)."""
        return self.objective.loss(self.module(**batch.inputs), batch.labels)

    def batches(
        self,
        encoded: EncodedData,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Batches over ``encoded``: shuffled with ``generator`` when given, else in order."""
        n = len(encoded)
        order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
        for start in range(0, n, batch_size):
            yield self.make_batch(encoded, order[start : start + batch_size])

    def trainable_named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters that are trained and sent, in a fixed order."""
        return [(name, p) for name, p in self.module.named_parameters() if p.requires_grad]

    def trainable_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.trainable_named_parameters())

    def get_trainable(self) -> NamedArrays:
        """A copy of the trainable parameters as ``float32`` numpy arrays."""
        return {name: p.detach().cpu().numpy().astype(np.float32, copy=True) for name, p in self.trainable_named_parameters()}

    def trainable_delta(self, reference: NamedArrays) -> NamedArrays:
        """The trainable parameters minus ``reference``: the values of ``subtract(get_trainable(), reference)``,
        without the intermediate copy where ``reference`` holds float32 arrays (the parameters cast to float32, as
        :meth:`get_trainable` casts them, then subtracted)."""
        delta = {}
        for name, p in self.trainable_named_parameters():
            value, base = p.detach().cpu().numpy(), reference[name]
            if isinstance(base, np.ndarray) and base.dtype == np.float32:
                delta[name] = np.subtract(value, base, dtype=np.float32)
            else:
                delta[name] = value.astype(np.float32) - base
        return delta

    def set_trainable(self, arrays: NamedArrays) -> None:
        """Load trainable parameters; the names and shapes must match exactly."""
        params = dict(self.trainable_named_parameters())
        if set(arrays) != set(params):
            missing = sorted(set(params) - set(arrays))[:3]
            extra = sorted(set(arrays) - set(params))[:3]
            raise ValueError(f"trainable parameter names differ: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, param in params.items():
                value = torch.from_numpy(np.ascontiguousarray(arrays[name]))
                if value.shape != param.shape:
                    raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
                param.copy_(value.to(param.dtype))

    def head_names(self) -> tuple[str, ...]:
        """The trainable parameters of the classification head (the module's ``head``), in the trainable order."""
        return tuple(name for name in self.trainable_names() if name.split(".", 1)[0] == HEAD)

    @contextmanager
    def holding_fixed(self, names: Collection[str]) -> Iterator[None]:
        """Within the block, the trainable parameters ``names`` are held fixed: ``requires_grad`` is off, so a trainer
        (which reads :meth:`trainable_named_parameters`) neither steps, clips nor noises them, and no per-example
        gradient is computed for them. They remain part of what is sent: outside the block they are trainable again,
        and their update, the trained value minus the global one, is exactly zero (linear probing's rounds,
        ``model.linear_probe_rounds``)."""
        trainable = dict(self.trainable_named_parameters())
        unknown = set(names) - trainable.keys()
        if unknown:
            raise ValueError(f"cannot hold fixed {sorted(unknown)[:3]}: not trainable parameters of this model")
        held = [trainable[name] for name in names]
        for p in held:
            p.requires_grad_(False)
        self.trainable_changed()
        try:
            yield
        finally:
            for p in held:
                p.requires_grad_(True)
            self.trainable_changed()

    def trainable_changed(self) -> None:  # noqa: B027 (optional hook)
        """Called when :meth:`holding_fixed` changes which parameters train (a model can skip work for frozen parts)."""

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for _, p in self.trainable_named_parameters())

    def total_parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())
