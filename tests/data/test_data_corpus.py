"""Unlabeled text: .txt files and folders, tables and hf: datasets read without labels, and the labels check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from secure_ffm.config import DataConfig
from secure_ffm.data import DatasetSplits, LabeledData, load_dataset_splits, load_federated_data, require_labels
from secure_ffm.errors import ConfigError

DOCUMENTS = [f"document number {i} of the corpus." for i in range(20)]


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep datasets' cache out of the home folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))


def load(dataset: str | Path, seed: int = 0, **overrides: object) -> DatasetSplits:
    return load_dataset_splits(DataConfig(dataset=str(dataset), **overrides), seed=seed)  # type: ignore[arg-type]


def everything(splits: DatasetSplits) -> list[str]:
    return sorted(splits.train.inputs + splits.test.inputs)


def test_a_txt_file_is_one_document_per_non_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(["  first line  ", "", "\t", *DOCUMENTS[1:]]) + "\n\n", encoding="utf-8")

    splits = load(path)

    assert splits.kind == "text" and not splits.labeled and splits.class_names == ("text",)
    assert everything(splits) == sorted(["first line", *DOCUMENTS[1:]])
    assert len(splits.test) == 4 and not splits.train.labels.any() and not splits.test.labels.any()


def test_the_test_documents_are_held_out_with_the_fixed_split_seed(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCUMENTS), encoding="utf-8")

    assert load(path, seed=0).test.inputs == load(path, seed=7).test.inputs


def test_a_folder_reads_every_txt_file_recursively_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "nested.txt").write_text("from b\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("from a\nagain from a\n", encoding="utf-8")
    (tmp_path / "c.TXT").write_bytes("caf\xe9 in Latin-1\n".encode("latin-1"))
    (tmp_path / "skip.csv").write_text("text,label\nnot read,0\n", encoding="utf-8")

    splits = load(tmp_path, test_fraction=0.25)

    in_path_order = ["from a", "again from a", "from b", "caf\xe9 in Latin-1"]  # a.txt, b/nested.txt, c.TXT
    assert everything(splits) == sorted(in_path_order)
    assert list(splits.train.inputs) == [d for d in in_path_order if d in splits.train.inputs] and len(splits.test) == 1


def test_max_train_examples_caps_a_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCUMENTS), encoding="utf-8")

    assert len(load(path, max_train_examples=5).train) == 5


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda root: root / "blank.txt", "holds no text (every line is blank)"),
        (lambda root: root / "empty", "holds no .txt files"),
        (lambda root: root / "tables", "holds no .txt files"),
        (lambda root: root / "missing.txt", "does not exist"),
        (lambda root: root / "one.txt", "holds 1 document"),
    ],
    ids=["blank file", "empty folder", "folder without .txt", "missing file", "one document"],
)
def test_an_empty_or_missing_corpus_names_the_key_and_the_path(tmp_path: Path, make, problem: str) -> None:
    (tmp_path / "blank.txt").write_text("\n   \n\t\n", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "train.csv").write_text("text\nhello\n", encoding="utf-8")
    (tmp_path / "one.txt").write_text("only one\n", encoding="utf-8")
    path = make(tmp_path)

    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load(path)

    assert caught.value.key == "data.dataset" and path.name in str(caught.value)


def test_a_table_with_an_empty_label_column_is_unlabeled_text(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    pd.DataFrame({"body": DOCUMENTS}).to_csv(path, index=False)

    splits = load(path, text_column="body", label_column="")

    assert not splits.labeled and everything(splits) == sorted(DOCUMENTS)


def test_hf_local_folder_with_only_a_text_column_uses_its_test_split(tmp_path: Path) -> None:
    pd.DataFrame({"text": DOCUMENTS[:12]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": DOCUMENTS[12:]}).to_csv(tmp_path / "test.csv", index=False)

    splits = load(f"hf:{tmp_path}", label_column="")

    assert not splits.labeled and splits.class_names == ("text",)
    assert splits.train.inputs == tuple(DOCUMENTS[:12]) and splits.test.inputs == tuple(DOCUMENTS[12:])


def test_hf_without_a_test_split_holds_out_test_fraction_of_the_texts(tmp_path: Path) -> None:
    pd.DataFrame({"text": DOCUMENTS, "label": [i % 2 for i in range(20)]}).to_csv(tmp_path / "train.csv", index=False)

    splits = load(f"hf:{tmp_path}", label_column="", test_fraction=0.25)

    assert not splits.labeled and len(splits.train) == 15 and len(splits.test) == 5
    assert everything(splits) == sorted(DOCUMENTS)


def test_require_labels_refuses_unlabeled_text_for_a_classifier(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCUMENTS), encoding="utf-8")

    with pytest.raises(ConfigError, match='set model.objective = "mlm"') as caught:
        require_labels(load(path))

    assert caught.value.key == "data.dataset"


def test_federated_unlabeled_text_is_refused_only_when_labels_are_needed(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCUMENTS), encoding="utf-8")
    config = DataConfig(dataset=str(path), num_clients=2, partition="iid")

    with pytest.raises(ConfigError, match="holds unlabeled text"):
        load_federated_data(config, seed=0)
    data = load_federated_data(config, seed=0, labels=False)

    assert sum(len(i) for i in data.client_indices) == len(data.private) == 16


def test_only_text_with_zero_labels_can_be_unlabeled() -> None:
    images = LabeledData(kind="image", inputs=np.zeros((2, 28, 28), dtype=np.uint8), labels=np.zeros(2))
    texts = LabeledData(kind="text", inputs=("a", "b"), labels=np.array([0, 1]))

    with pytest.raises(ValueError, match="only text"):
        DatasetSplits(name="x", train=images, test=images, class_names=("text",), labeled=False)
    with pytest.raises(ValueError, match="every label 0"):
        DatasetSplits(name="x", train=texts, test=texts, class_names=("text",), labeled=False)
