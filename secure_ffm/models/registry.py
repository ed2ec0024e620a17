"""The ``[model] arch`` registry and the one front door, :func:`build_model`.

Each architecture registers a :class:`ModelBuilder` that says which kind of data
it reads (``image`` or ``text``) and how to build it. :func:`build_model` checks
the architecture against the dataset and seeds every freshly initialised weight
(classifier heads, LoRA adapters, small vision models) from ``seed`` without
touching the caller's global torch RNG, so two builds with the same config and
seed are identical and are the common starting point of a federation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import DataKind, ImageShape
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import FederatedModel
from secure_ffm.models.objectives import OBJECTIVES
from secure_ffm.registry import Registry

DEFAULT_MAX_LENGTH = 64
"""Token limit used when :func:`build_model` is not given ``max_length`` (``DataConfig.max_length``'s default)."""
DEFAULT_IMAGE_SHAPE: ImageShape = (1, 28, 28)
"""``(channels, height, width)`` used when :func:`build_model` is not given ``image_shape`` (Fashion-MNIST's)."""


class BuildFunction(Protocol):
    def __call__(self, config: ModelConfig, *, num_classes: int, max_length: int, image_shape: ImageShape) -> FederatedModel: ...


@dataclass(frozen=True)
class ModelBuilder:
    """A registered architecture: the data kind it reads and how to build it for each objective it supports."""

    data_kind: DataKind
    builds: dict[str, BuildFunction] = field(default_factory=dict)
    """By ``model.objective`` name (:data:`secure_ffm.models.objectives.OBJECTIVES`)."""
    prompt_objectives: set[str] = field(default_factory=set)
    """The objectives whose build takes the prompt learning modes of ``model.finetune`` (:mod:`secure_ffm.models.prompt`)."""
    lora: bool = True
    """Whether ``model.finetune = "lora"`` applies (``ModelConfig`` refuses it up front otherwise)."""

    @property
    def build(self) -> BuildFunction:
        """The classification build."""
        return self.builds["classification"]


MODELS: Registry[ModelBuilder] = Registry("model architecture")


def register_model(
    name: str, *, data_kind: DataKind, objective: str = "classification", prompt_learning: bool = False, lora: bool = True
) -> Callable[[BuildFunction], BuildFunction]:
    """Register ``build(config, *, num_classes, max_length, image_shape)`` as architecture ``name`` for ``objective``.

    ``max_length`` is the token limit of text models, ``image_shape`` the ``(channels, height, width)`` of the
    dataset's images; a builder ignores the one that does not concern its kind of data.

    The build function runs under a seeded, forked torch RNG (see :func:`build_model`),
    so it may initialise weights with the ordinary ``torch.nn.init`` functions. An architecture that supports
    another objective (``mlm``) registers a second build under the same name. ``prompt_learning``: the build takes
    the prompt modes of ``model.finetune`` (``prompt``, ``prefix``, ``p-tuning``); ``ModelConfig`` refuses them for
    the others.
    """

    def decorator(build: BuildFunction) -> BuildFunction:
        if name not in MODELS:
            MODELS.register(name)(ModelBuilder(data_kind=data_kind, lora=lora))
        builder = MODELS.get(name)
        if builder.data_kind != data_kind:
            raise ValueError(f"model architecture {name!r} reads {builder.data_kind} data, not {data_kind}")
        if objective in builder.builds:
            raise ValueError(f"model architecture {name!r} already has a build for objective {objective!r}")
        builder.builds[objective] = build
        if prompt_learning:
            builder.prompt_objectives.add(objective)
        return build

    return decorator


def build_model(
    config: ModelConfig,
    *,
    num_classes: int,
    data_kind: DataKind,
    seed: int,
    max_length: int = DEFAULT_MAX_LENGTH,
    image_shape: ImageShape | None = None,
) -> FederatedModel:
    """Build the ``[model]`` section's architecture for a dataset.

    Parameters
    ----------
    config:
        The ``[model]`` section.
    num_classes:
        Number of classes of the dataset (size of the classifier head), at least 2.
    data_kind:
        ``"image"`` or ``"text"``; an architecture for the other kind is a
        :class:`~secure_ffm.errors.ConfigError` on ``model.arch``.
    seed:
        Seeds every newly initialised weight. The global torch RNG is left as it was.
    max_length:
        Token limit for text models (``DataConfig.max_length``); ignored by image models.
    image_shape:
        ``(channels, height, width)`` of the dataset's images (:attr:`DatasetSplits.image_shape`), which sizes the
        image models; ``None`` is :data:`DEFAULT_IMAGE_SHAPE`. Ignored by text models.
    """
    builder = MODELS.get(config.arch, key="model.arch")
    if builder.data_kind != data_kind:
        fitting = [name for name in MODELS.names() if MODELS.get(name).data_kind == data_kind]
        raise ConfigError(
            "model.arch",
            f"{config.arch!r} reads {builder.data_kind} data but the dataset is {data_kind}",
            f"use {_one_of([repr(name) for name in fitting])}" if fitting else None,
        )
    if config.objective not in builder.builds:
        fitting = [name for name in MODELS.names() if config.objective in MODELS.get(name).builds]
        raise ConfigError(
            "model.objective",
            f"{config.objective!r} is not an objective of model.arch = {config.arch!r}",
            f"use model.arch = {_one_of([repr(name) for name in fitting])} for it, or objective = 'classification'",
        )
    if num_classes < 2 and OBJECTIVES.get(config.objective).reads_labels:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: accelerator RNGs are left alone
        build = builder.builds[config.objective]
        return build(config, num_classes=num_classes, max_length=max_length, image_shape=image_shape or DEFAULT_IMAGE_SHAPE)


def _one_of(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
