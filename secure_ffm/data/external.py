"""Text datasets beyond the built-ins: local files and Hugging Face datasets (whose image datasets go to :mod:`secure_ffm.data.images`).

``data.dataset`` names them by form:

- a path ending in ``.csv``, ``.jsonl``, ``.json`` or ``.parquet``: one table, split
  into train and test (stratified, fixed split seed) with ``data.test_fraction``
  (a ``.txt`` file or a folder is an unlabeled corpus: :mod:`secure_ffm.data.corpus`);
- ``hf:<name>[:<config>]``: ``datasets.load_dataset(name, config)``, which also
  reads a local folder of ``train.csv``/``test.csv`` (or ``.jsonl``, ``.parquet``)
  files offline. ``data.train_split`` and ``data.test_split`` pick the splits;
  without a test split the train split is divided with ``data.test_fraction``.
  A dataset whose ``data.image_column`` is an Image feature (e.g. ``hf:<folder>``
  of class subfolders of images) is read as images by :mod:`secure_ffm.data.images`.

Both read ``data.text_column`` and ``data.label_column``. Labels may be class
names (sorted into class ids), integers (their sorted distinct values become
class ids ``0..K-1``, so ``0/1`` stays ``0/1``) or a Hugging Face ``ClassLabel``
(its ids and names are kept). Rows whose text or label is missing are dropped.
``data.label_column = ""`` reads the texts alone, as unlabeled text
(:func:`~secure_ffm.data.base.unlabeled_text`, for masked-language-model pre-training).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.base import DatasetSplits, LabeledData, unlabeled_text
from secure_ffm.data.builtin import text_splits
from secure_ffm.data.corpus import CORPUS_SUFFIX, corpus_splits
from secure_ffm.data.images import is_image_dataset, load_hf_images
from secure_ffm.data.split import SPLIT_SEED, derive_rng, stratified_split
from secure_ffm.errors import ConfigError, MissingResourceError
from secure_ffm.registry import nearest

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
IMAGE_FILE_SUFFIXES = (".npz",)
"""Files of image arrays (:func:`secure_ffm.data.images.load_npz`)."""
HF_PREFIX = "hf:"


def encode_labels(values: Sequence[Any], *, key: str = "data.label_column") -> tuple[np.ndarray, tuple[str, ...]]:
    """Class ids and class names for raw label values.

    Strings are sorted and numbered; integers (and whole floats, and booleans)
    are numbered by their sorted distinct values, with names ``str(value)``.

    Raises
    ------
    ConfigError
        Naming ``key`` when the labels are fractional numbers or mixed types.
    """
    array = np.asarray(values, dtype=object)
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64), ()
    if all(isinstance(v, str) for v in array):
        names = sorted(set(array.tolist()))
        index = {name: i for i, name in enumerate(names)}
        return np.asarray([index[v] for v in array], dtype=np.int64), tuple(names)
    if all(isinstance(v, bool | int | float | np.bool_ | np.integer | np.floating) and not isinstance(v, str) for v in array):
        numbers = array.astype(np.float64)
        if not np.all(np.isfinite(numbers)) or not np.all(numbers == np.round(numbers)):
            raise ConfigError(key, "holds fractional numbers, not classes", "point it at a column of class names or integer class ids")
        ints = numbers.astype(np.int64)
        distinct, codes = np.unique(ints, return_inverse=True)
        return codes.astype(np.int64), tuple(str(v) for v in distinct)
    kinds = sorted({type(v).__name__ for v in array})
    raise ConfigError(key, f"holds values of mixed types ({', '.join(kinds)})", "use one type of label: class names or integer class ids")


def _check_column(column: str, key: str, columns: Sequence[str], where: str) -> None:
    if column in columns:
        return
    hint = nearest(column, list(columns))
    fix = f"did you mean {hint!r}?" if hint else f"set {key} to one of the columns"
    raise ConfigError(key, f"column {column!r} not in {where} (columns: {', '.join(map(str, columns))})", fix)


# --------------------------------------------------------------------------- local files


def looks_like_path(name: str) -> bool:
    """Whether ``data.dataset`` is meant as a file path rather than a dataset name."""
    suffixes = (*FILE_SUFFIXES, *IMAGE_FILE_SUFFIXES, CORPUS_SUFFIX)
    return name.lower().endswith(suffixes) or "/" in name or "\\" in name or name.startswith((".", "~"))


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd  # only for tables: a run on built-in data does not pay its import

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # Only empty cells are missing: texts such as "NA" or "null" stay texts.
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if suffix == ".parquet":
            return pd.read_parquet(path)
        # JSON is parsed with the json module so that values keep their types
        # (pandas would turn date-like or numeric-looking strings into other types).
        content = path.read_text(encoding="utf-8")
        if suffix == ".json" and content.lstrip().startswith(("[", "{")):
            try:
                return pd.DataFrame(json.loads(content))
            except json.JSONDecodeError:
                pass  # not one document: JSON lines
        return pd.DataFrame([json.loads(line) for line in content.splitlines() if line.strip()])
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ConfigError("data.dataset", f"cannot read {str(path)!r}: {error}", f"check that it is a valid {suffix[1:]} file") from None


def load_file(config: DataConfig) -> DatasetSplits:
    """A local ``.csv``, ``.jsonl``, ``.json`` or ``.parquet`` table of texts and labels.

    Raises
    ------
    ConfigError
        ``data.dataset`` when the file is missing, of another type or unreadable;
        ``data.text_column`` / ``data.label_column`` when a column is absent or
        holds the wrong kind of values.
    """
    path = Path(config.dataset).expanduser()
    if path.is_dir():
        raise ConfigError(
            "data.dataset", f"{str(path)!r} is a folder", f"name one file, or use hf:{path} to load a folder of train/test files"
        )
    if not path.is_file():
        fix = f"check the path (relative paths start from {Path.cwd()})"
        if path.suffix.lower() not in FILE_SUFFIXES:
            fix += f", or write hf:{config.dataset} for a Hugging Face dataset"
        raise ConfigError("data.dataset", f"file {str(path)!r} does not exist", fix)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ConfigError(
            "data.dataset",
            f"unsupported file type {path.suffix!r}",
            f"use a {', '.join(FILE_SUFFIXES)} file of texts, a .npz file of images or a folder of class subfolders of images",
        )
    frame = _read_table(path)
    columns = [str(c) for c in frame.columns]
    _check_column(config.text_column, "data.text_column", columns, path.name)
    wanted = [config.text_column]
    if config.label_column:
        _check_column(config.label_column, "data.label_column", columns, path.name)
        wanted.append(config.label_column)
    frame = frame[wanted]
    complete = frame.dropna()
    if len(complete) < len(frame):
        logger.warning("%s: dropped %d rows without a text or label", path.name, len(frame) - len(complete))
    texts = complete[config.text_column].tolist()
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError(
            "data.text_column", f"column {config.text_column!r} in {path.name} does not hold text", "point it at the column of texts"
        )
    if not config.label_column:
        logger.info("read %d unlabeled texts from %s", len(texts), path)
        return corpus_splits(config.dataset, tuple(texts), config.test_fraction)
    labels, class_names = encode_labels(complete[config.label_column].tolist())
    if len(class_names) < 2:
        raise ConfigError(
            "data.label_column",
            f"column {config.label_column!r} in {path.name} holds {len(class_names)} class(es)",
            "a classifier needs at least two classes",
        )
    logger.info("read %d examples of %d classes from %s", len(texts), len(class_names), path)
    return text_splits(config.dataset, tuple(texts), labels, class_names, config)


# --------------------------------------------------------------------------- Hugging Face


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingResourceError("the Hugging Face datasets library", "pip install datasets") from None
    return datasets


def _hf_columns(split: Any, config: DataConfig, where: str) -> tuple[list[str], list[Any]]:
    """The texts and raw labels of one split (labels all ``0`` when ``data.label_column`` is ``""``)."""
    columns = list(split.column_names)
    _check_column(config.text_column, "data.text_column", columns, where)
    if config.label_column:
        _check_column(config.label_column, "data.label_column", columns, where)
        raw_labels = split[config.label_column]
    else:
        raw_labels = [0] * len(split)
    pairs = [(t, y) for t, y in zip(split[config.text_column], raw_labels, strict=True) if t is not None and y is not None]
    if len(pairs) < len(split):
        logger.warning("%s: dropped %d rows without a text or label", where, len(split) - len(pairs))
    texts = [t for t, _ in pairs]
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError(
            "data.text_column", f"column {config.text_column!r} in {where} does not hold text", "point it at the column of texts"
        )
    return texts, [y for _, y in pairs]


def _hf_unlabeled(config: DataConfig, name: str, train: Any, test: Any | None) -> DatasetSplits:
    """The text column alone (``data.label_column = ""``): its test split, or ``data.test_fraction`` held out."""
    train_texts, _ = _hf_columns(train, config, f"{name}[{config.train_split}]")
    if test is None:
        logger.info("%s has no split %r; holding out data.test_fraction of %r", name, config.test_split, config.train_split)
        return corpus_splits(config.dataset, tuple(train_texts), config.test_fraction, key="data.train_split")
    test_texts, _ = _hf_columns(test, config, f"{name}[{config.test_split}]")
    if not train_texts or not test_texts:
        empty = config.train_split if not train_texts else config.test_split
        key = "data.train_split" if not train_texts else "data.test_split"
        raise ConfigError(key, f"split {empty!r} of {name} holds no text", "choose a split with texts")
    logger.info("loaded %s as unlabeled text: %d train, %d test texts", config.dataset, len(train_texts), len(test_texts))
    return unlabeled_text(config.dataset, tuple(train_texts), tuple(test_texts))


def load_hf(config: DataConfig) -> DatasetSplits:
    """A Hugging Face dataset, ``hf:<name>[:<config>]`` (a Hub name or a local folder).

    Offline (``HF_DATASETS_OFFLINE=1``), only datasets already in the Hugging
    Face cache and local folders load. ``data.label_column = ""`` reads the text column alone.
    """
    datasets = _import_datasets()
    name, _, subset = config.dataset[len(HF_PREFIX) :].partition(":")
    if not name:
        raise ConfigError("data.dataset", f"{config.dataset!r} names no dataset", "write hf:<name> or hf:<name>:<config>")
    try:
        loaded = datasets.load_dataset(name, subset or None)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise ConfigError(
            "data.dataset",
            f"cannot load Hugging Face dataset {name!r}: {error}",
            "check the name; offline, only cached datasets and local folders load",
        ) from None
    splits = list(loaded.keys())
    if config.train_split not in splits:
        hint = nearest(config.train_split, splits)
        fix = f"did you mean {hint!r}?" if hint else f"choose one of: {', '.join(splits)}"
        raise ConfigError("data.train_split", f"split {config.train_split!r} not in {name} (splits: {', '.join(splits)})", fix)
    train = loaded[config.train_split]
    test = loaded[config.test_split] if config.test_split in splits else None
    if not config.label_column:
        return _hf_unlabeled(config, name, train, test)
    if is_image_dataset(train, config):
        return load_hf_images(name, train, test, config)
    label_feature = train.features.get(config.label_column)
    class_label = isinstance(label_feature, datasets.ClassLabel)

    train_texts, train_raw = _hf_columns(train, config, f"{name}[{config.train_split}]")
    test_texts, test_raw = _hf_columns(test, config, f"{name}[{config.test_split}]") if test is not None else ([], [])
    if class_label:
        # ClassLabel ids are the labels; -1 marks an unlabelled example (e.g. GLUE test splits).
        class_names = tuple(label_feature.names)
        train_keep = [i for i, y in enumerate(train_raw) if y >= 0]
        test_keep = [i for i, y in enumerate(test_raw) if y >= 0]
        train_texts, train_labels = [train_texts[i] for i in train_keep], np.asarray([train_raw[i] for i in train_keep], dtype=np.int64)
        test_texts, test_labels = [test_texts[i] for i in test_keep], np.asarray([test_raw[i] for i in test_keep], dtype=np.int64)
    else:
        codes, class_names = encode_labels(list(train_raw) + list(test_raw))
        train_labels, test_labels = codes[: len(train_raw)], codes[len(train_raw) :]
    if not train_texts:
        raise ConfigError(
            "data.train_split", f"split {config.train_split!r} of {name} has no labelled examples", "choose a split with labels"
        )
    if test is not None and not test_texts:
        raise ConfigError(
            "data.test_split", f"split {config.test_split!r} of {name} has no labelled examples", "choose another split, e.g. 'validation'"
        )

    train_data = LabeledData(kind="text", inputs=tuple(train_texts), labels=train_labels)
    if test is None:
        logger.warning(
            "%s has no split %r (splits: %s); holding out data.test_fraction=%s of %r",
            name,
            config.test_split,
            ", ".join(splits),
            config.test_fraction,
            config.train_split,
        )
        train_idx, test_idx = stratified_split(train_labels, config.test_fraction, derive_rng(SPLIT_SEED, "test-split"))
        train_data, test_data = train_data.subset(train_idx), train_data.subset(test_idx)
    else:
        test_data = LabeledData(kind="text", inputs=tuple(test_texts), labels=test_labels)
    logger.info("loaded %s: %d train, %d test examples, %d classes", config.dataset, len(train_data), len(test_data), len(class_names))
    return DatasetSplits(name=config.dataset, train=train_data, test=test_data, class_names=class_names)
