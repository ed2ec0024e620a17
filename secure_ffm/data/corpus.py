"""Unlabeled text corpora: a local ``.txt`` file or a folder of them (for masked-language-model pre-training).

``data.dataset`` (or ``public_data.dataset``) names one by path:

- a ``.txt`` file: one document per line; blank lines are skipped and each line is stripped;
- a folder: every ``.txt`` file under it (any case of the suffix), recursively, read in sorted path order.

Files are read as UTF-8 (Latin-1 when a file is not UTF-8, with a warning). The corpus has no
test split of its own: ``data.test_fraction`` of the documents is held out with the fixed
:data:`~secure_ffm.data.split.SPLIT_SEED`, so every run of a corpus is scored on the same
documents. The result is a :class:`~secure_ffm.data.base.DatasetSplits` with ``labeled=False``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.base import DatasetSplits, read_text_file, unlabeled_text
from secure_ffm.data.split import SPLIT_SEED, derive_rng, stratified_split
from secure_ffm.errors import ConfigError

logger = logging.getLogger(__name__)

CORPUS_SUFFIX = ".txt"


def is_corpus_path(path: Path) -> bool:
    """Whether ``path`` names a corpus: an existing folder, or a ``.txt`` file (existing or not)."""
    return path.is_dir() or path.suffix.lower() == CORPUS_SUFFIX


def holds_corpus_files(folder: Path) -> bool:
    """Whether a folder holds at least one ``.txt`` file (at any depth)."""
    return any(p.suffix.lower() == CORPUS_SUFFIX and p.is_file() for p in folder.rglob("*"))


def corpus_files(path: Path, *, key: str = "data.dataset") -> list[Path]:
    """The ``.txt`` files of a corpus path, sorted (a file is its own list).

    Raises
    ------
    ConfigError
        Naming ``key`` when the path does not exist or is a folder without ``.txt`` files.
    """
    if path.is_file():
        return [path]
    if not path.exists():
        raise ConfigError(key, f"file {str(path)!r} does not exist", f"check the path (relative paths start from {Path.cwd()})")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() == CORPUS_SUFFIX and p.is_file())
    if not files:
        raise ConfigError(
            key,
            f"folder {str(path)!r} holds no {CORPUS_SUFFIX} files",
            f"put the documents in {CORPUS_SUFFIX} files, one per line, or write hf:{path} for a folder of train/test tables",
        )
    return files


def read_corpus(path: Path, *, key: str = "data.dataset") -> tuple[str, ...]:
    """The documents of a ``.txt`` file or folder: one per non-blank line, stripped, in file order.

    Raises
    ------
    ConfigError
        Naming ``key`` when the path is missing, unreadable, or holds no non-blank line.
    """
    documents: list[str] = []
    for file in corpus_files(path, key=key):
        try:
            text = read_text_file(file)
        except OSError as error:
            raise ConfigError(key, f"cannot read {str(file)!r}: {error.strerror or error}", "check its permissions") from None
        documents.extend(line.strip() for line in text.splitlines() if line.strip())
    if not documents:
        raise ConfigError(key, f"{str(path)!r} holds no text (every line is blank)", "give one document per line")
    return tuple(documents)


def corpus_splits(name: str, documents: tuple[str, ...], test_fraction: float, *, key: str = "data.dataset") -> DatasetSplits:
    """Unlabeled train and test splits of ``documents``: ``test_fraction`` held out with the fixed split seed.

    Raises
    ------
    ConfigError
        Naming ``key`` when there are fewer than two documents (one to train on, one to test on).
    """
    if len(documents) < 2:
        raise ConfigError(key, f"{name!r} holds {len(documents)} document", "give at least two: one to train on, one to test on")
    train_idx, test_idx = stratified_split(np.zeros(len(documents), dtype=np.int64), test_fraction, derive_rng(SPLIT_SEED, "test-split"))
    return unlabeled_text(name, tuple(documents[i] for i in train_idx), tuple(documents[i] for i in test_idx))


def load_corpus(config: DataConfig) -> DatasetSplits:
    """A local ``.txt`` file or folder of them as unlabeled text (``data.text_column`` and ``data.label_column`` unused)."""
    path = Path(config.dataset).expanduser()
    documents = read_corpus(path)
    logger.info("read a corpus of %d documents from %s", len(documents), path)
    return corpus_splits(config.dataset, documents, config.test_fraction)
