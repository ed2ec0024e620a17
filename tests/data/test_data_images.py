"""Image sources beyond the built-ins: ImageFolder folders, .npz arrays, hf: image datasets, and their errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from secure_ffm.config import DataConfig
from secure_ffm.data import load_dataset_splits
from secure_ffm.data.base import LabeledData
from secure_ffm.errors import ConfigError


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep datasets' cache out of the home folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))


def load(dataset: str | Path, **overrides: object):
    return load_dataset_splits(DataConfig(dataset=str(dataset), **overrides), seed=0)  # type: ignore[arg-type]


@contextmanager
def raises(key: str, *fragments: str) -> Iterator[None]:
    """Expect a ConfigError on ``key`` whose message holds every fragment."""
    with pytest.raises(ConfigError) as caught:
        yield
    assert caught.value.key == key, str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


# --------------------------------------------------------------------------- ImageFolder


def test_an_rgb_folder_is_read_as_colour_images_with_a_stratified_held_out_split(rgb_folder: Path) -> None:
    splits = load(rgb_folder, test_fraction=1 / 3)
    assert splits.kind == "image" and splits.class_names == ("blue", "green", "red")
    assert splits.train.inputs.shape == (12, 8, 8, 3) and splits.train.inputs.dtype == np.uint8
    assert splits.image_shape == (3, 8, 8)
    assert np.bincount(splits.test.labels).tolist() == [2, 2, 2]
    assert splits.normalization.channels == 3
    # class k is brightest in channel k
    for k in range(3):
        assert splits.train.inputs[splits.train.labels == k].mean(axis=(0, 1, 2)).argmax() == k
    assert np.array_equal(load(rgb_folder, test_fraction=1 / 3).test.inputs, splits.test.inputs)  # fixed split seed


def test_train_and_test_subfolders_are_the_splits(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "d" / "train", per_class=4)
    make_image_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    splits = load(tmp_path / "d")
    assert len(splits.train) == 12 and len(splits.test) == 6
    assert splits.class_names == ("blue", "green", "red")


def test_an_all_greyscale_folder_gives_single_channel_images(tmp_path: Path, make_image_folder) -> None:
    splits = load(make_image_folder(tmp_path / "grey", mode="L"))
    assert splits.train.inputs.ndim == 3 and splits.image_shape == (1, 8, 8)
    assert splits.normalization.channels == 1


def test_greyscale_and_colour_images_mixed_are_all_read_as_rgb(rgb_folder: Path) -> None:
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8), mode="L").save(rgb_folder / "red" / "grey.png")
    splits = load(rgb_folder)
    assert splits.image_shape == (3, 8, 8)


def test_images_of_different_sizes_need_data_image_size(rgb_folder: Path) -> None:
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(rgb_folder / "red" / "big.png")
    with raises("data.image_size", "differ in size", "8x8", "12x10", "set data.image_size"):
        load(rgb_folder)
    splits = load(rgb_folder, image_size=16)
    assert splits.image_shape == (3, 16, 16)


def test_jpeg_images_are_read(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "j" / name).mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "j" / name / f"{i}.JPG", format="JPEG")
    assert load(tmp_path / "j").image_shape == (3, 8, 8)


def test_a_folder_without_class_subfolders_of_images_names_the_path_and_the_layout(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "flat" / "0.png")
    with raises("data.dataset", str(tmp_path / "flat"), "no class subfolders", "expected <folder>/<class>/<image>.png"):
        load(tmp_path / "flat")


def test_a_folder_of_text_files_suggests_hf(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "train.csv").write_text("text,label\na,0\n")
    with raises("data.dataset", "no PNG/JPEG images", f"hf:{tmp_path / 'texts'}"):
        load(tmp_path / "texts")


def test_an_unreadable_image_is_named(rgb_folder: Path) -> None:
    (rgb_folder / "red" / "broken.png").write_bytes(b"not a png")
    with raises("data.dataset", "broken.png", "remove or replace"):
        load(rgb_folder)


def test_a_test_class_missing_from_train_is_refused(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "d" / "train", classes=("a", "b"))
    make_image_folder(tmp_path / "d" / "test", classes=("a", "b", "c"))
    with raises("data.dataset", "lacks: c"):
        load(tmp_path / "d")


def test_a_single_class_is_refused(tmp_path: Path, make_image_folder) -> None:
    with raises("data.dataset", "1 class"):
        load(make_image_folder(tmp_path / "one", classes=("only",)))


# --------------------------------------------------------------------------- .npz


def test_npz_with_train_and_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "a.npz"
    x_train = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    y_train, y_test = np.arange(12) % 3, np.arange(6) % 3
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_train[:6], y_test=y_test, class_names=np.array(["a", "b", "c"]))
    splits = load(path)
    assert np.array_equal(splits.train.inputs, x_train) and np.array_equal(splits.train.labels, y_train)
    assert splits.class_names == ("a", "b", "c") and len(splits.test) == 6


def test_npz_floats_in_unit_range_channels_first_and_a_held_out_split(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    x = np.random.default_rng(1).random((20, 3, 8, 8))
    np.savez(path, x=x, y=np.array(["cat", "dog"] * 10))
    splits = load(path, test_fraction=0.2, image_size=4)
    assert splits.image_shape == (3, 4, 4) and len(splits.test) == 4
    assert splits.class_names == ("cat", "dog")
    assert splits.train.inputs.dtype == np.uint8


def test_npz_greyscale_keeps_one_channel(tmp_path: Path) -> None:
    path = tmp_path / "g.npz"
    np.savez(path, x=np.random.default_rng(2).integers(0, 255, (10, 6, 6, 1), dtype=np.uint8), y=np.arange(10) % 2)
    assert load(path).image_shape == (1, 6, 6)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"images": np.zeros((4, 8, 8), np.uint8)}, "expected x_train, y_train, x_test, y_test"),
        ({"x": np.zeros((4, 8), np.uint8), "y": np.arange(4)}, "has shape (4, 8)"),
        ({"x": np.full((4, 8, 8), 2.0), "y": np.arange(4)}, "floats outside [0, 1]"),
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.arange(3)}, "one label per image"),
    ],
)
def test_npz_of_the_wrong_form_names_the_file_and_what_was_expected(tmp_path: Path, arrays: dict, fragment: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with raises("data.dataset", str(path), fragment):
        load(path)


def test_a_file_that_is_not_npz_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_text("hello")
    with raises("data.dataset", "cannot read", "numpy.savez"):
        load(path)


# --------------------------------------------------------------------------- hf:


def test_hf_local_image_folder_is_read_as_images(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "d" / "train", per_class=4)
    make_image_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    splits = load(f"hf:{tmp_path / 'd'}")
    assert splits.kind == "image" and splits.image_shape == (3, 8, 8)
    assert splits.class_names == ("blue", "green", "red")
    assert len(splits.train) == 12 and len(splits.test) == 6
    # the same pixels and labels as the ImageFolder loader reads
    direct = load(tmp_path / "d")
    order = np.lexsort((direct.train.inputs.reshape(12, -1).sum(1), direct.train.labels))
    order_hf = np.lexsort((splits.train.inputs.reshape(12, -1).sum(1), splits.train.labels))
    assert np.array_equal(direct.train.inputs[order], splits.train.inputs[order_hf])


def test_hf_image_folder_without_a_test_split_holds_one_out(rgb_folder: Path) -> None:
    splits = load(f"hf:{rgb_folder}", test_fraction=1 / 3)
    assert len(splits.train) == 12 and len(splits.test) == 6


def test_hf_image_dataset_with_a_missing_label_column_names_the_key(rgb_folder: Path) -> None:
    with raises("data.label_column", "'klass'"):
        load(f"hf:{rgb_folder}", label_column="klass")


def test_labeled_data_refuses_images_of_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        LabeledData(kind="image", inputs=np.zeros((2, 8, 8, 2), np.uint8), labels=np.array([0, 1]))


def test_a_folder_is_standardised_with_fixed_constants_unless_its_statistics_are_asked_for(rgb_folder: Path) -> None:
    """The default normalization is independent of the images (an audit told two datasets differing in one image
    apart from the statistics an export carried); ``training`` takes the images' own, and is refused under DP."""
    from secure_ffm.config import config_from_dict
    from secure_ffm.data.normalization import ImageNormalization

    fixed = load_dataset_splits(DataConfig(dataset=str(rgb_folder)), seed=0)
    assert fixed.normalization == ImageNormalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    own = load_dataset_splits(DataConfig(dataset=str(rgb_folder), image_normalization="training"), seed=0)
    assert own.normalization == ImageNormalization.of_images(np.moveaxis(own.train.inputs, -1, 1))
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"dataset": str(rgb_folder), "image_normalization": "training"}, "privacy": {"mode": "dp-sgd"}})
    assert info.value.key == "data.image_normalization"
