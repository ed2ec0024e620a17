"""Shared test set-up: offline, quiet, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from collections.abc import Iterator  # noqa: E402 (after the environment is set)

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
