"""Image normalization: the dataclass, and the statistics the built-in image datasets declare."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_ffm.config import DataConfig
from secure_ffm.data import DATASETS, DatasetSplits, LabeledData, load_dataset_splits, load_federated_data
from secure_ffm.data.builtin import (
    DIGITS_CLASSES,
    DIGITS_NORMALIZATION,
    FASHION_MNIST_NORMALIZATION,
    _digits_arrays,
    digits_to_28x28,
)
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import MissingResourceError


def load(name: str, seed: int = 0, **overrides: object) -> DatasetSplits:
    try:
        return load_dataset_splits(DataConfig(dataset=name, **overrides), seed)  # type: ignore[arg-type]
    except MissingResourceError as error:
        pytest.skip(str(error))


def test_normalization_is_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="one mean and one std per channel"):
        ImageNormalization(mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(ValueError, match="positive"):
        ImageNormalization(mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="one mean"):
        ImageNormalization(mean=(), std=())
    n = ImageNormalization(mean=[0.5], std=[0.25])  # type: ignore[arg-type]
    assert n.mean == (0.5,) and n.std == (0.25,) and n.channels == 1
    assert n.to_dict() == {"mean": [0.5], "std": [0.25]}
    with pytest.raises(AttributeError):
        n.mean = (0.1,)  # type: ignore[misc]


def test_greyscale_normalize_is_the_scalar_arithmetic_and_denormalize_undoes_it() -> None:
    pixels = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    n = FASHION_MNIST_NORMALIZATION
    assert torch.equal(n.normalize(pixels), (pixels - 0.2860) / 0.3530)  # bit for bit what the model did before
    assert torch.equal(n.denormalize(pixels), pixels * 0.3530 + 0.2860)
    assert torch.allclose(n.denormalize(n.normalize(pixels)), pixels, atol=1e-6)
    copy = pixels.clone()
    assert n.normalize(copy, inplace=True) is copy and torch.equal(copy, n.normalize(pixels))
    assert n.bounds() == (((0.0 - 0.2860) / 0.3530,), ((1.0 - 0.2860) / 0.3530,))


def test_colour_normalization_works_per_channel() -> None:
    n = ImageNormalization(mean=(0.1, 0.5, 0.9), std=(0.1, 0.2, 0.3))
    pixels = torch.rand((2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    normalized = n.normalize(pixels)
    for c in range(3):
        assert torch.allclose(normalized[:, c], (pixels[:, c] - n.mean[c]) / n.std[c])
    assert torch.allclose(n.denormalize(normalized), pixels, atol=1e-6)
    low, high = n.bounds()
    assert low == pytest.approx((-1.0, -2.5, -3.0)) and high == pytest.approx((9.0, 2.5, 1 / 3))
    with pytest.raises(ValueError, match="3 channels"):
        n.normalize(torch.zeros((2, 1, 4, 4)))


def test_of_images_gives_the_mean_and_std_of_the_scaled_pixels() -> None:
    images = np.array([[[0, 255], [0, 255]]], dtype=np.uint8)  # half black, half white
    assert ImageNormalization.of_images(images) == ImageNormalization(mean=(0.5,), std=(0.5,))
    colour = np.array([[[[0, 255], [0, 255]], [[51, 51], [102, 102]]]], dtype=np.uint8)  # (1, 2, 2, 2): 0/1 and 0.2/0.4
    assert ImageNormalization.of_images(colour) == ImageNormalization(mean=(0.5, 0.3), std=(0.5, 0.1))
    with pytest.raises(ValueError, match="positive"):
        ImageNormalization.of_images(np.zeros((2, 28, 28), dtype=np.uint8))  # a constant image has no spread


def test_text_data_has_no_normalization() -> None:
    with pytest.raises(ValueError, match="text data"):
        LabeledData(kind="text", inputs=("a",), labels=np.array([0]), normalization=FASHION_MNIST_NORMALIZATION)
    assert LabeledData(kind="text", inputs=("a",), labels=np.array([0])).normalization is None


def test_splits_must_agree_on_their_normalization() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    a = LabeledData(kind="image", inputs=images, labels=np.array([0, 1]), normalization=FASHION_MNIST_NORMALIZATION)
    b = LabeledData(kind="image", inputs=images, labels=np.array([0, 1]), normalization=DIGITS_NORMALIZATION)
    with pytest.raises(ValueError, match="normalized differently"):
        DatasetSplits(name="mixed", train=a, test=b, class_names=("x", "y"))


def test_fashion_mnist_declares_its_statistics_and_subsets_keep_them() -> None:
    assert FASHION_MNIST_NORMALIZATION == ImageNormalization(mean=(0.2860,), std=(0.3530,))  # the constants the results used
    splits = load("fashion_mnist", max_train_examples=200, max_test_examples=50)
    assert splits.normalization == FASHION_MNIST_NORMALIZATION
    assert splits.train.normalization == splits.test.normalization == FASHION_MNIST_NORMALIZATION
    assert splits.train.subset(np.arange(3)).normalization == FASHION_MNIST_NORMALIZATION


def test_text_datasets_declare_none() -> None:
    splits = load("trec")
    assert splits.normalization is None


def test_digits_to_28x28_scales_enlarges_and_frames() -> None:
    image = np.zeros((1, 8, 8))
    image[0, 0, 0], image[0, 7, 7], image[0, 3, 4] = 16, 8, 1
    out = digits_to_28x28(image)
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8
    assert (out[0, 2:5, 2:5] == 255).all() and (out[0, 23:26, 23:26] == 128).all() and (out[0, 11:14, 14:17] == 16).all()
    assert out[0, :2].sum() == out[0, -2:].sum() == out[0, :, :2].sum() == out[0, :, -2:].sum() == 0
    with pytest.raises(ValueError, match="8x8"):
        digits_to_28x28(np.zeros((1, 28, 28)))


def test_digits_is_a_builtin_image_dataset_with_its_own_normalization() -> None:
    assert "digits" in DATASETS
    splits = load("digits")
    assert splits.kind == "image" and splits.class_names == DIGITS_CLASSES and splits.num_classes == 10
    assert splits.train.inputs.shape == (1438, 28, 28) and splits.test.inputs.shape == (359, 28, 28)
    assert splits.train.inputs.dtype == np.uint8 and splits.train.inputs.max() == 255
    assert splits.normalization == DIGITS_NORMALIZATION != FASHION_MNIST_NORMALIZATION
    assert np.bincount(splits.test.labels).min() >= 34  # stratified: 17-18% of every class
    again = load("digits", seed=5)  # the split uses the fixed split seed, not the run seed
    np.testing.assert_array_equal(again.test.labels, splits.test.labels)


def test_digits_normalization_constants_are_the_statistics_of_the_data() -> None:
    try:
        images, _ = _digits_arrays()
    except MissingResourceError as error:
        pytest.skip(str(error))
    assert ImageNormalization.of_images(images) == DIGITS_NORMALIZATION


def test_federated_digits_keep_the_normalization() -> None:
    try:
        data = load_federated_data(DataConfig(dataset="digits", num_clients=4, partition="iid"), seed=0)
    except MissingResourceError as error:
        pytest.skip(str(error))
    assert data.dataset.normalization == data.private.normalization == data.test.normalization == DIGITS_NORMALIZATION
    assert data.client_data(0).normalization == DIGITS_NORMALIZATION
