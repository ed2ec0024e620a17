"""The single entry point that turns ``[data]`` into train and test splits."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from secure_ffm.config import DataConfig
from secure_ffm.data.base import DatasetSplits, drop_labels
from secure_ffm.data.builtin import DATASETS, Loader
from secure_ffm.data.corpus import holds_corpus_files, is_corpus_path, load_corpus
from secure_ffm.data.external import HF_PREFIX, load_file, load_hf, looks_like_path
from secure_ffm.data.images import IMAGE_SUFFIXES, load_image_folder, load_npz
from secure_ffm.data.split import SPLIT_SEED, derive_rng, stratified_subset
from secure_ffm.errors import ConfigError
from secure_ffm.registry import nearest

logger = logging.getLogger(__name__)

FILE_LOADERS: dict[str, Loader] = {".npz": load_npz}
"""Local files by suffix that are not tables of texts (every other file goes to :func:`load_file`)."""


def load_path(config: DataConfig) -> DatasetSplits:
    """A local path: a ``.txt`` file or a folder holding ``.txt`` files (an unlabeled corpus), any other folder as
    class subfolders of images, a ``.npz`` file of images, or a table of texts."""
    path = Path(config.dataset).expanduser()
    if is_corpus_path(path) and (not path.is_dir() or holds_corpus_files(path)):
        return load_corpus(config)
    if path.is_dir():
        if not any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in path.rglob("*")):
            raise ConfigError(
                "data.dataset",
                f"folder {str(path)!r} holds no .txt files and no PNG/JPEG images",
                "give a folder of .txt files (unlabeled text, one document per line) or of class subfolders of images "
                f"(<folder>/<class>/<image>.png), or write hf:{path} for a folder of train/test tables",
            )
        return load_image_folder(config)
    return FILE_LOADERS.get(path.suffix.lower(), load_file)(config)


SOURCE_KEYS = ("text_column", "label_column", "train_split", "test_split", "image_column", "image_size")
"""``[data]`` keys that say how to read a file, a folder or an ``hf:`` dataset; the built-ins have fixed columns, splits
and image sizes (``label_column = ""``, unlabeled text, applies to every text source)."""


def check_builtin_keys(config: DataConfig) -> None:
    """Refuse a source key a built-in dataset would ignore (``data.image_size = 32`` on ``fashion_mnist`` resized nothing)."""
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    for key in SOURCE_KEYS:
        value = getattr(config, key)
        if value == defaults[key] or (key == "label_column" and value == ""):
            continue
        raise ConfigError(
            f"data.{key}",
            f"{value!r} does not apply to the built-in dataset {config.dataset!r} (its columns, splits and image size are fixed); "
            "it reads .csv/.jsonl/.parquet files, image folders, .npz files and hf: datasets",
            f"leave data.{key} at {defaults[key]!r}" + (' (or "" for unlabeled text)' if key == "label_column" else ""),
        )


def resolve_loader(dataset: str) -> Loader:
    """The loader for a ``data.dataset`` value: built-in name, ``hf:`` name, or a path: a table file, a ``.npz`` file of
    images, a folder of images (ImageFolder layout), or a ``.txt`` file or a folder of them (an unlabeled corpus,
    :mod:`~secure_ffm.data.corpus`).

    Raises
    ------
    ConfigError
        ``data.dataset`` for an unknown name, with the nearest built-in suggested.
    """
    if dataset in DATASETS:
        return DATASETS.get(dataset)
    if dataset.startswith(HF_PREFIX):
        return load_hf
    if looks_like_path(dataset) or Path(dataset).expanduser().exists():
        return load_path
    hint = nearest(dataset, DATASETS.names())
    fix = (
        f"did you mean {hint!r}?"
        if hint
        else f"use a built-in ({', '.join(DATASETS.names())}), hf:<name>[:<config>], a .csv/.jsonl/.parquet/.npz file, "
        "an image folder, or a .txt file or folder"
    )
    raise ConfigError("data.dataset", f"unknown dataset {dataset!r}", fix)


def load_dataset_splits(config: DataConfig, seed: int) -> DatasetSplits:
    """Load ``config.dataset`` and cap its splits at ``max_train_examples`` / ``max_test_examples``.

    Parameters
    ----------
    config:
        The ``[data]`` section.
    seed:
        The run seed. It picks the stratified training subset when
        ``max_train_examples`` cuts the train split. Everything that decides the
        *test* examples (the held-out split of sources without a test split, and
        the ``max_test_examples`` subset) uses the fixed
        :data:`~secure_ffm.data.split.SPLIT_SEED` instead, so runs that differ
        only in seed are scored on the same examples.

    Returns
    -------
    DatasetSplits
        Train and test splits with their class names. ``data.label_column = ""`` gives unlabeled
        text (``labeled=False``) from any text source, the built-ins included.
    """
    if config.dataset in DATASETS:
        check_builtin_keys(config)
    splits = resolve_loader(config.dataset)(config)
    if not config.label_column:
        splits = drop_labels(splits)
    train, test = splits.train, splits.test
    if 0 < config.max_train_examples < len(train):
        train = train.subset(stratified_subset(train.labels, config.max_train_examples, derive_rng(seed, "train-subsample")))
    if 0 < config.max_test_examples < len(test):
        test = test.subset(stratified_subset(test.labels, config.max_test_examples, derive_rng(SPLIT_SEED, "test-subsample")))
    what = f"{splits.num_classes} classes" if splits.labeled else "unlabeled"
    logger.info("dataset %s: %d train, %d test examples, %s", splits.name, len(train), len(test), what)
    return dataclasses.replace(splits, train=train, test=test)
