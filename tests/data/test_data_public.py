"""[public_data]: a separate dataset as the server's public data, its config section and its checks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from secure_ffm.config import DataConfig, config_from_dict
from secure_ffm.data import DatasetSplits, LabeledData, federate, load_federated_data, load_public_data, load_run_data
from secure_ffm.errors import ConfigError, MissingResourceError
from secure_ffm.run.writer import config_differences

TEXTS = [f"a review numbered {i}" for i in range(30)]


def table(path: Path, labels: list[str], texts: list[str] = TEXTS) -> str:
    pd.DataFrame({"text": texts[: len(labels)], "label": labels}).to_csv(path, index=False)
    return str(path)


def private_splits(class_names: tuple[str, ...] = ("negative", "neutral", "positive")) -> DatasetSplits:
    texts = tuple(f"private text {i}" for i in range(24))
    data = LabeledData(kind="text", inputs=texts, labels=np.arange(24) % len(class_names))
    return DatasetSplits(name="private", train=data.subset(np.arange(18)), test=data.subset(np.arange(18, 24)), class_names=class_names)


def test_the_public_data_is_the_train_split_with_labels_mapped_by_class_name(tmp_path: Path) -> None:
    path = table(tmp_path / "public.csv", ["positive", "negative"] * 10)

    public = load_public_data(DataConfig(dataset=path), private_splits(), seed=0)

    assert len(public) == 16  # 20 rows less the 20% test split
    names = ("negative", "neutral", "positive")
    labels = {text: "positive" if int(text.rsplit(" ", 1)[1]) % 2 == 0 else "negative" for text in public.inputs}
    assert [names[y] for y in public.labels] == [labels[t] for t in public.inputs]


def test_max_train_examples_caps_the_public_data(tmp_path: Path) -> None:
    path = table(tmp_path / "public.csv", ["positive", "negative"] * 10)

    assert len(load_public_data(DataConfig(dataset=path, max_train_examples=6), private_splits(), seed=0)) == 6


def test_public_classes_the_private_data_lacks_are_refused(tmp_path: Path) -> None:
    path = table(tmp_path / "public.csv", ["ham", "spam"] * 10)

    with pytest.raises(ConfigError, match="classes 'ham', 'spam' that data.dataset 'private' does not") as caught:
        load_public_data(DataConfig(dataset=path), private_splits(), seed=0)

    assert caught.value.key == "public_data.dataset"


def test_without_labels_any_text_serves_and_its_labels_are_dropped(tmp_path: Path) -> None:
    path = table(tmp_path / "public.csv", ["ham", "spam"] * 10)

    public = load_public_data(DataConfig(dataset=path), private_splits(), seed=0, labels=False)

    assert len(public) == 16 and not public.labels.any()


def test_unlabeled_public_text_is_refused_for_a_classifier(tmp_path: Path) -> None:
    corpus = tmp_path / "general.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")

    with pytest.raises(ConfigError, match="holds unlabeled text") as caught:
        load_public_data(DataConfig(dataset=str(corpus)), private_splits(), seed=0)

    assert caught.value.key == "public_data.dataset"
    assert len(load_public_data(DataConfig(dataset=str(corpus)), private_splits(), seed=0, labels=False)) == 24


def test_public_data_of_another_kind_is_refused(tmp_path: Path) -> None:
    images = LabeledData(kind="image", inputs=np.zeros((4, 28, 28), dtype=np.uint8), labels=np.array([0, 1, 0, 1]))
    private = DatasetSplits(name="pictures", train=images, test=images, class_names=("a", "b"))
    corpus = tmp_path / "general.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")

    with pytest.raises(ConfigError, match="holds text data but data.dataset 'pictures' holds image data") as caught:
        load_public_data(DataConfig(dataset=str(corpus)), private, seed=0, labels=False)

    assert caught.value.key == "public_data.dataset"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"dataset": "nowhere/absent.csv"}, "public_data.dataset"), ({"text_column": "body"}, "public_data.text_column")],
)
def test_loader_errors_name_the_public_data_key(tmp_path: Path, overrides: dict[str, str], key: str) -> None:
    config = DataConfig(**{"dataset": table(tmp_path / "public.csv", ["positive", "negative"] * 10), **overrides})

    with pytest.raises(ConfigError) as caught:
        load_public_data(config, private_splits(), seed=0)

    assert caught.value.key == key


def test_federate_keeps_the_whole_train_split_private_beside_a_separate_public_dataset() -> None:
    splits = private_splits()
    public = LabeledData(kind="text", inputs=("server only",) * 4, labels=np.zeros(4))

    data = federate(splits, DataConfig(num_clients=3, partition="iid"), seed=0, public=public)

    assert data.public is public and len(data.private) == len(splits.train)
    with pytest.raises(ConfigError, match="data.public_fraction"):
        federate(splits, DataConfig(num_clients=3, partition="iid", public_fraction=0.2), seed=0, public=public)


def test_load_federated_data_checks_the_private_labels_before_the_public_data(tmp_path: Path) -> None:
    corpus = tmp_path / "domain.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    public = DataConfig(dataset=table(tmp_path / "public.csv", ["ham", "spam"] * 10))

    with pytest.raises(ConfigError) as caught:
        load_federated_data(DataConfig(dataset=str(corpus), num_clients=2), seed=0, public=public)

    assert caught.value.key == "data.dataset"
    data = load_federated_data(DataConfig(dataset=str(corpus), num_clients=2), seed=0, public=public, labels=False)
    assert len(data.public) == 16 and not data.public.labels.any()


# --------------------------------------------------------------------------- the [public_data] section


def run_config(public: dict | None = None, **sections: dict) -> object:
    raw: dict = {"data": {"dataset": "trec", "num_clients": 2}, **sections}
    if public is not None:
        raw["public_data"] = public
    return config_from_dict(raw)


def test_public_data_is_absent_unless_given() -> None:
    assert run_config().public_data is None
    assert "public_data" not in run_config().to_dict()


def test_public_data_round_trips_through_toml_with_its_own_keys_only() -> None:
    config = run_config({"dataset": "fortunes", "max_train_examples": 500}, ffm={"schedule": "alternating"})

    document = tomllib.loads(config.to_toml())

    assert set(document["public_data"]) == {
        "dataset",
        "text_column",
        "label_column",
        "train_split",
        "test_split",
        "test_fraction",
        "max_train_examples",
    }
    assert config_from_dict(document) == config


@pytest.mark.parametrize("key", ["num_clients", "partition", "alpha", "public_fraction", "max_length", "max_test_examples"])
def test_keys_that_split_data_among_clients_are_refused_in_public_data(key: str) -> None:
    value = DataConfig().__getattribute__(key)
    with pytest.raises(ConfigError, match=r"does not apply to the server's public data \(set data\.") as caught:
        run_config({"dataset": "fortunes", key: value})

    assert caught.value.key == f"public_data.{key}"


def test_bad_public_data_values_name_the_public_data_key() -> None:
    with pytest.raises(ConfigError) as caught:
        run_config({"dataset": "fortunes", "test_fraction": 1.5})
    assert caught.value.key == "public_data.test_fraction"
    with pytest.raises(ConfigError, match="did you mean public_data.dataset"):
        run_config({"datset": "fortunes"})


def test_public_fraction_and_public_data_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[public_data\] both give the server public data") as caught:
        run_config({"dataset": "fortunes"}, data={"dataset": "trec", "num_clients": 2, "public_fraction": 0.1})

    assert caught.value.key == "data.public_fraction"


def test_the_clients_dataset_as_public_data_is_refused() -> None:
    with pytest.raises(ConfigError, match="the clients would hold the server's public data") as caught:
        run_config({"dataset": "trec"})

    assert caught.value.key == "public_data.dataset"


@pytest.mark.parametrize("schedule", ["centralized", "alternating", "adaptive"])
def test_a_schedule_that_trains_on_public_data_needs_some(schedule: str) -> None:
    with pytest.raises(ConfigError, match="there is no \\[public_data\\]") as caught:
        run_config(ffm={"schedule": schedule})

    assert caught.value.key == "ffm.schedule"
    assert run_config({"dataset": "fortunes"}, ffm={"schedule": schedule}).public_data.dataset == "fortunes"


def test_a_resume_notices_public_data_added_or_changed() -> None:
    without, with_fortunes = run_config(), run_config({"dataset": "fortunes"})

    assert "public_data.dataset" in config_differences(without, with_fortunes)
    assert "public_data.dataset" in config_differences(with_fortunes, without)
    assert config_differences(with_fortunes, run_config({"dataset": "fortunes"})) == []
    assert config_differences(with_fortunes, run_config({"dataset": "sms_spam"})) == ["public_data.dataset"]


def test_public_data_paths_are_checked_like_data_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_ffm.config import check_local_paths

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist") as caught:
        check_local_paths(run_config({"dataset": "./corpus/general.txt"}))

    assert caught.value.key == "public_data.dataset"


def test_a_run_classifier_refuses_unlabeled_public_data() -> None:
    config = run_config({"dataset": "fortunes"}, data={"dataset": "trec", "num_clients": 2, "max_train_examples": 40})

    try:
        load_run_data(config)
    except MissingResourceError as error:
        pytest.skip(str(error))
    except ConfigError as error:
        assert error.key == "public_data.dataset" and "holds unlabeled text (fortunes)" in str(error)
    else:
        pytest.fail("a classifier trained on the unlabeled fortunes")
