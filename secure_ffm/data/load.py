"""The single entry point that turns ``[data]`` into train and test splits."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from secure_ffm.config import DataConfig
from secure_ffm.data.base import DatasetSplits, drop_labels
from secure_ffm.data.builtin import DATASETS, Loader
from secure_ffm.data.corpus import is_corpus_path, load_corpus
from secure_ffm.data.external import HF_PREFIX, load_file, load_hf, looks_like_path
from secure_ffm.data.split import SPLIT_SEED, derive_rng, stratified_subset
from secure_ffm.errors import ConfigError
from secure_ffm.registry import nearest

logger = logging.getLogger(__name__)


def resolve_loader(dataset: str) -> Loader:
    """The loader for a ``data.dataset`` value: built-in name, ``hf:`` name, a ``.txt`` file or folder
    (an unlabeled corpus, :mod:`~secure_ffm.data.corpus`) or a table file.

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
        return load_corpus if is_corpus_path(Path(dataset).expanduser()) else load_file
    hint = nearest(dataset, DATASETS.names())
    fix = (
        f"did you mean {hint!r}?"
        if hint
        else f"use a built-in ({', '.join(DATASETS.names())}), hf:<name>[:<config>], a .csv/.jsonl/.parquet file, or a .txt file or folder"
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
