"""Shared data and (slow to import) model fixtures for the model tests."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.models import build_model
from secure_ffm.models.text import TextModel

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
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


def read_fashion_mnist(n: int) -> LabeledData:
    """The first ``n`` Fashion-MNIST training images, read straight from the idx files."""
    images_path = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        pytest.skip(f"Fashion-MNIST idx files not found in {FASHION_MNIST_DIR}")
    with gzip.open(images_path) as f:
        f.read(16)
        images = np.frombuffer(f.read(n * 28 * 28), dtype=np.uint8).reshape(n, 28, 28)
    with gzip.open(labels_path) as f:
        f.read(8)
        labels = np.frombuffer(f.read(n), dtype=np.uint8).astype(np.int64)
    return LabeledData(kind="image", inputs=images.copy(), labels=labels)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run these small models on one intra-op thread, restoring the setting afterwards.

    On a 2-core machine shared with other processes, two OpenMP threads spin at
    every barrier of the many tiny ops here: the suite took 78 s instead of 12 s.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def fashion_512() -> LabeledData:
    return read_fashion_mnist(512)


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
