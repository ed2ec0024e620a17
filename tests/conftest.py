"""Shared test set-up: offline, quiet, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from collections.abc import Iterator  # noqa: E402 (after the environment is set)
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from secure_ffm.config import DataConfig  # noqa: E402
from secure_ffm.data.base import DatasetSplits  # noqa: E402
from secure_ffm.data.builtin import fashion_mnist  # noqa: E402
from secure_ffm.errors import MissingResourceError  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small models on one intra-op thread, restored afterwards (opt in with ``usefixtures`` or a dependent fixture).

    On a 2-core machine shared with other processes, two OpenMP threads spin at every barrier
    of the many tiny ops of these tests: the model tests took 78 s instead of 12 s.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def fashion_mnist_splits() -> DatasetSplits:
    """Fashion-MNIST through the project's loader (file order); skips when the Debian package is absent."""
    try:
        return fashion_mnist(DataConfig(dataset="fashion_mnist"))
    except MissingResourceError as error:
        pytest.skip(str(error))


def write_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("blue", "green", "red"),
    per_class: int = 6,
    size: int = 8,
    mode: str = "RGB",
    seed: int = 0,
) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png`` of small generated images (nothing binary is committed).

    Class ``k`` is brightest in channel ``k % 3`` (greyscale: brightness grows with ``k``) plus noise, so a model can
    learn it. Returns ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, size=(size, size, 3))
            pixels = noise + np.eye(3, dtype=np.int64)[k % 3] * 180 if mode == "RGB" else noise + 60 * k
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="RGB")
            image.convert(mode).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def rgb_folder(tmp_path: Path) -> Path:
    """Three classes of six 8x8 RGB PNGs in class folders, under ``tmp_path / "images"``."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def make_image_folder():
    """:func:`write_image_folder`, for tests that need other classes, sizes or colour modes."""
    return write_image_folder
