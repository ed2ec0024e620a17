"""Shared data and (slow to import) model fixtures for the model tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import DatasetSplits, LabeledData
from secure_ffm.models import build_model
from secure_ffm.models.text import TextModel

TEXT_MAX_LENGTH = 32

POSITIVE = (
    "A warm, funny film with a terrific cast.",
    "I loved every minute of this movie.",
    "The acting is superb and the story is moving.",
    "One of the best films I have seen this year.",
    "Beautifully shot, and the music is wonderful.",
    "A delightful comedy that the whole family will enjoy.",
    "Smart writing and a great lead performance.",
    "I laughed, I cried, I would watch it again.",
    "An excellent thriller that keeps you guessing.",
    "The director has made a charming little gem.",
    "Great food and friendly staff, highly recommended.",
    "The hotel room was clean and the view was stunning.",
    "Fast delivery and the product works perfectly.",
    "This book is a joy to read from start to finish.",
    "What a fantastic concert, the band was brilliant.",
    "Lovely service and very reasonable prices.",
)
NEGATIVE = (
    "A dull, lifeless film with a terrible script.",
    "I hated every minute of this movie.",
    "The acting is wooden and the story makes no sense.",
    "One of the worst films I have seen this year.",
    "Badly shot, and the music is annoying.",
    "A painful comedy without a single good joke.",
    "Lazy writing and a boring lead performance.",
    "I was bored and walked out halfway through.",
    "A predictable thriller with no suspense at all.",
    "The director has made a confused, ugly mess.",
    "Cold food and rude staff, never going back.",
    "The hotel room was dirty and the bed was broken.",
    "Late delivery and the product stopped working.",
    "This book is a chore to read and far too long.",
    "What an awful concert, the sound was terrible.",
    "Slow service and ridiculously high prices.",
)


@pytest.fixture(scope="module", autouse=True)
def _models_on_one_torch_thread(one_torch_thread: None) -> None:
    """Every model test runs on one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def fashion_512(fashion_mnist_splits: DatasetSplits) -> LabeledData:
    """The first 512 Fashion-MNIST training images."""
    return fashion_mnist_splits.train.subset(np.arange(512))


@pytest.fixture(scope="session")
def sentiment() -> LabeledData:
    """32 short labelled sentences (1 = positive, 0 = negative), interleaved."""
    texts = tuple(t for pair in zip(POSITIVE, NEGATIVE, strict=True) for t in pair)
    labels = np.tile(np.array([1, 0], dtype=np.int64), len(POSITIVE))
    return LabeledData(kind="text", inputs=texts, labels=labels)


def build_minilm(finetune: str, *, seed: int = 0) -> TextModel:
    """A MiniLM classifier with 2 classes and a 32-token limit (about 0.2 s once transformers is imported)."""
    config = ModelConfig(arch="hf-text", name_or_path="all-MiniLM-L6-v2", finetune=finetune)
    model = build_model(config, num_classes=2, data_kind="text", seed=seed, max_length=TEXT_MAX_LENGTH)
    assert isinstance(model, TextModel)
    return model


@pytest.fixture(scope="session")
def minilm() -> Callable[..., TextModel]:
    """The builder itself, for tests that train or wrap a model of their own."""
    return build_minilm


@pytest.fixture(scope="session")
def text_max_length() -> int:
    return TEXT_MAX_LENGTH


@pytest.fixture(scope="session")
def minilm_lora() -> TextModel:
    """Shared, read-only: tests that train or wrap a model build their own."""
    return build_minilm("lora")


@pytest.fixture(scope="session")
def minilm_full() -> TextModel:
    return build_minilm("full")


@pytest.fixture(scope="session")
def minilm_head() -> TextModel:
    return build_minilm("head")
