"""Local files, hf: datasets and the errors for names that are neither."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from secure_ffm.config import DataConfig
from secure_ffm.data import load_dataset_splits
from secure_ffm.errors import ConfigError

REVIEWS = {
    "review": [f"review number {i}" for i in range(40)],
    "sentiment": ["pos" if i % 4 else "neg" for i in range(40)],
}


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep datasets' cache out of the home folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))


def load(dataset: str | Path, **overrides: object) -> object:
    return load_dataset_splits(DataConfig(dataset=str(dataset), **overrides), seed=0)  # type: ignore[arg-type]


def test_csv_with_named_columns_maps_string_labels_to_sorted_class_names(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame(REVIEWS).to_csv(path, index=False)

    splits = load(path, text_column="review", label_column="sentiment")

    assert splits.kind == "text"
    assert splits.class_names == ("neg", "pos")
    assert len(splits.train) == 32 and len(splits.test) == 8
    assert np.bincount(splits.test.labels).tolist() == [2, 6]
    for text, label in zip(splits.train.inputs, splits.train.labels, strict=True):
        number = int(text.rsplit(" ", 1)[1])
        assert label == (0 if number % 4 == 0 else 1)


def test_csv_keeps_texts_that_pandas_would_read_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    path.write_text("text,label\nNA,0\nnull,1\nNone,0\nN/A,1\n,0\nfine,1\n", encoding="utf-8")

    splits = load(path, test_fraction=0.25)

    assert sorted(splits.train.inputs + splits.test.inputs) == ["N/A", "NA", "None", "fine", "null"]


def test_jsonl_with_integer_labels_keeps_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    rows = [{"question": f"q{i}?", "topic": i % 3} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    splits = load(path, text_column="question", label_column="topic")

    assert splits.class_names == ("0", "1", "2")
    for text, label in zip(
        splits.train.inputs + splits.test.inputs, np.concatenate([splits.train.labels, splits.test.labels]), strict=True
    ):
        assert label == int(text[1:-1]) % 3


def test_json_array_and_parquet_files_are_read(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": REVIEWS["review"], "label": REVIEWS["sentiment"]})
    frame.to_json(tmp_path / "reviews.json", orient="records")
    frame.to_parquet(tmp_path / "reviews.parquet")

    from_json, from_parquet = load(tmp_path / "reviews.json"), load(tmp_path / "reviews.parquet")

    assert from_json.train.inputs == from_parquet.train.inputs
    assert len(from_json.train) + len(from_json.test) == 40


@pytest.mark.parametrize(
    ("key", "overrides"), [("data.text_column", {"text_column": "body"}), ("data.label_column", {"label_column": "stars"})]
)
def test_missing_column_names_the_key_and_lists_the_columns(tmp_path: Path, key: str, overrides: dict[str, str]) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)

    with pytest.raises(ConfigError, match="columns: text, label") as caught:
        load(path, **overrides)

    assert caught.value.key == key


def test_fractional_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.5, 1.0, -2.25]}).to_csv(path, index=False)

    with pytest.raises(ConfigError, match="fractional") as caught:
        load(path)

    assert caught.value.key == "data.label_column"


def test_unknown_dataset_suggests_the_nearest_builtin() -> None:
    with pytest.raises(ConfigError, match="did you mean 'movie_reviews'") as caught:
        load("movie_review")

    assert caught.value.key == "data.dataset"


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load(tmp_path / "nowhere.csv")

    assert caught.value.key == "data.dataset"


def test_unsupported_file_type_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "notes.xlsx"
    path.write_text("hello", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"unsupported file type '\.xlsx'"):
        load(path)


def test_hf_local_folder_uses_its_train_and_test_files(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["good", "bad", "fine", "awful"], "label": ["pos", "neg", "pos", "neg"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    pd.DataFrame({"text": ["great", "poor", "meh"], "label": ["pos", "neg", "zzz"]}).to_csv(tmp_path / "test.csv", index=False)

    splits = load(f"hf:{tmp_path}")

    assert splits.train.inputs == ("good", "bad", "fine", "awful")
    assert splits.test.inputs == ("great", "poor", "meh")
    assert splits.class_names == ("neg", "pos", "zzz")
    assert splits.test.labels.tolist() == [1, 0, 2]


def test_hf_without_test_split_holds_out_test_fraction(tmp_path: Path) -> None:
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}).to_csv(tmp_path / "train.csv", index=False)

    splits = load(f"hf:{tmp_path}", test_fraction=0.25)

    assert len(splits.train) == 15 and len(splits.test) == 5
    assert set(splits.train.inputs).isdisjoint(splits.test.inputs)


def test_hf_class_label_feature_gives_the_class_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["sad", "happy", "angry"])})
    for split, labels in (("train", [0, 1, 1, 2]), ("test", [2, -1, 0])):
        data = {"sentence": [f"{split}{i}" for i in range(len(labels))], "label": labels}
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))

    splits = load(f"hf:{tmp_path}", text_column="sentence")

    assert splits.class_names == ("sad", "happy", "angry")
    assert splits.train.labels.tolist() == [0, 1, 1, 2]
    assert splits.test.inputs == ("test0", "test2")  # -1 marks an unlabelled example


def test_hf_unknown_train_split_names_the_splits(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "train.csv", index=False)

    with pytest.raises(ConfigError, match="splits: train") as caught:
        load(f"hf:{tmp_path}", train_split="training")

    assert caught.value.key == "data.train_split"


def test_hf_missing_dataset_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load Hugging Face dataset") as caught:
        load(f"hf:{tmp_path / 'absent'}")

    assert caught.value.key == "data.dataset"
