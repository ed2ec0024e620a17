"""Shared fixtures of the defense tests: a real SmallCNN, real Fashion-MNIST images, updates and contexts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import DatasetSplits, LabeledData
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.models import build_model
from secure_ffm.models.base import EncodedData, FederatedModel


@pytest.fixture(scope="module", autouse=True)
def _defenses_on_one_torch_thread(one_torch_thread: None) -> None:
    """Every defense test runs on one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def fashion_64(fashion_mnist_splits: DatasetSplits) -> LabeledData:
    """The first 64 Fashion-MNIST training images."""
    return fashion_mnist_splits.train.subset(np.arange(64))


def build_cnn(seed: int = 0) -> FederatedModel:
    return build_model(ModelConfig(arch="cnn", finetune="full"), num_classes=10, data_kind="image", seed=seed)


@pytest.fixture
def cnn() -> FederatedModel:
    """A fresh SmallCNN (about 207k parameters, ``fc`` then ``head``) for each test."""
    return build_cnn()


@pytest.fixture(scope="session")
def cnn_encoded(fashion_64: LabeledData) -> EncodedData:
    return build_cnn().encode(fashion_64)


def _random_update(model: FederatedModel, seed: int = 0) -> ClientUpdate:
    """A dense update with one normal float32 array per trainable parameter, plus a side statistic."""
    rng = np.random.default_rng(seed)
    delta = {name: rng.normal(0.0, 0.01, size=tuple(p.shape)).astype(np.float32) for name, p in model.trainable_named_parameters()}
    return ClientUpdate(3, 2, delta, 40, {"train_loss": 1.5}, {"unclipped": np.asarray([1.0])})


def _make_context(model: FederatedModel, encoded: EncodedData, *, seed: int = 7, indices: np.ndarray | None = None) -> TransformContext:
    return TransformContext(
        round=2,
        client_id=3,
        rng=np.random.default_rng(seed),
        global_parameters=model.get_trainable(),
        model=model,
        encoded=encoded,
        indices=np.arange(40) if indices is None else indices,
    )


@pytest.fixture(scope="session")
def random_update() -> Callable[..., ClientUpdate]:
    """``random_update(model, seed=0)``: a dense update with one normal float32 array per trainable parameter."""
    return _random_update


@pytest.fixture(scope="session")
def make_context() -> Callable[..., TransformContext]:
    """``make_context(model, encoded, seed=7, indices=arange(40))``: a context with a seeded generator and the model."""
    return _make_context
