"""Image datasets beyond the built-ins: a folder of class subfolders, a ``.npz`` file, and ``hf:`` image datasets.

``data.dataset`` names them by form (:func:`~secure_ffm.data.load.resolve_loader`):

- a folder in the ImageFolder layout, ``<folder>/<class>/<image>.png`` (``.png``, ``.jpg``, ``.jpeg``; nested
  folders inside a class are read too). When it holds ``train/`` and ``test/`` folders of that layout they are the
  splits; otherwise ``data.test_fraction`` is held out, stratified, with the fixed split seed. Class names are the
  sorted subfolder names.
- a ``.npz`` file with the arrays ``x_train, y_train, x_test, y_test`` (or ``x, y``: a held-out split is drawn),
  images ``(N, H, W)``, ``(N, H, W, 1|3)`` or ``(N, 1|3, H, W)``, ``uint8`` or floats in [0, 1]; labels are class
  ids or names (an optional ``class_names`` array names integer ids ``0..K-1``).
- ``hf:<name>``, when the dataset has an Image column ``data.image_column`` (for example ``hf:<folder>`` of class
  subfolders, read offline by ``datasets``' ``imagefolder`` builder); labels come from ``data.label_column``.

Every source ends as ``uint8`` arrays, ``(N, H, W)`` when every image is greyscale and ``(N, H, W, 3)`` RGB
otherwise, resized to ``data.image_size`` when it is set (bilinear, Pillow); with ``data.image_size = 0`` every
image must have the same size. Each dataset declares a normalization, which the image model standardises with:
0.5 and 0.5 per channel by default, or its *training* images' statistics with ``data.image_normalization =
"training"`` (:meth:`ImageNormalization.of_images`; a statistic of private data, refused under a privacy budget).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.base import COLOUR_CHANNELS, DatasetSplits, LabeledData
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.data.split import SPLIT_SEED, derive_rng, stratified_split
from secure_ffm.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
"""Pillow modes of single-channel images (``LA``: grey with alpha, the alpha dropped)."""
NPZ_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_WHOLE_KEYS = ("x", "y")
LAYOUT = "expected <folder>/<class>/<image>.png (or .jpg), optionally under <folder>/train/ and <folder>/test/"


def _pillow() -> Any:
    from PIL import Image

    return Image


# --------------------------------------------------------------------------- shared


def pil_to_arrays(images: Sequence[Any], config: DataConfig, where: str) -> np.ndarray:
    """Pillow images as one ``uint8`` array: ``(N, H, W)`` if all are greyscale, else ``(N, H, W, 3)``, resized to
    ``data.image_size`` when it is set.

    Raises
    ------
    ConfigError
        ``data.image_size`` when it is 0 and the images differ in size.
    """
    if not images:
        raise ConfigError("data.dataset", f"{where} holds no images", LAYOUT)
    mode = "L" if all(image.mode in GREY_MODES for image in images) else "RGB"
    size = (config.image_size, config.image_size) if config.image_size else None
    if size is None:
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise ConfigError(
                "data.image_size",
                f"is 0 (keep the source size) but the images in {where} differ in size ({shown})",
                "set data.image_size, e.g. 32, to resize them all",
            )
    resample = _pillow().Resampling.BILINEAR
    arrays = []
    for image in images:
        converted = image.convert(mode)
        if size is not None and converted.size != size:
            converted = converted.resize(size, resample=resample)
        arrays.append(np.asarray(converted, dtype=np.uint8))
    return np.stack(arrays)


def _resize_arrays(images: np.ndarray, config: DataConfig) -> np.ndarray:
    """``uint8`` arrays resized to ``data.image_size`` (bilinear, Pillow); unchanged when it is 0 or already that size."""
    size = config.image_size
    if not size or images.shape[1:3] == (size, size):
        return images
    image = _pillow()
    mode = "L" if images.ndim == 3 else "RGB"
    resized = [np.asarray(image.fromarray(x, mode=mode).resize((size, size), resample=image.Resampling.BILINEAR)) for x in images]
    return np.stack(resized).astype(np.uint8)


def channels_of(images: np.ndarray) -> int:
    """Channels of ``uint8`` images ``(N, H, W)`` (1) or ``(N, H, W, C)``."""
    return 1 if images.ndim == 3 else int(images.shape[-1])


def normalization_of(images: np.ndarray, where: str) -> ImageNormalization:
    """The per-channel statistics of ``uint8`` images ``(N, H, W)`` or ``(N, H, W, 3)``.

    Raises
    ------
    ConfigError
        ``data.dataset`` when a channel is constant (no spread to standardise by).
    """
    channels_first = images if images.ndim == 3 else np.moveaxis(images, -1, 1)
    try:
        return ImageNormalization.of_images(channels_first)
    except ValueError:
        raise ConfigError("data.dataset", f"the training images of {where} are constant in a channel", "use images with content") from None


def image_splits(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    class_names: tuple[str, ...],
    config: DataConfig,
) -> DatasetSplits:
    """Splits of ``uint8`` images and class ids; without ``test``, ``data.test_fraction`` of ``train`` is held out
    (stratified, fixed split seed). The normalization is ``data.image_normalization``'s: 0.5 and 0.5 per channel, or
    the training images' statistics."""
    if len(class_names) < 2:
        raise ConfigError("data.dataset", f"{name!r} holds {len(class_names)} class(es)", "a classifier needs at least two classes")
    train_x, train_y = train
    if test is None:
        logger.info("%s has no test split: holding out data.test_fraction=%s", name, config.test_fraction)
        kept, held = stratified_split(train_y, config.test_fraction, derive_rng(SPLIT_SEED, "test-split"))
        test = (train_x[held], train_y[held])
        train_x, train_y = train_x[kept], train_y[kept]
    test_x, test_y = test
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(
            "data.dataset",
            f"the train and test images of {name!r} differ in shape ({train_x.shape[1:]} and {test_x.shape[1:]})",
            "set data.image_size to resize both, and give both splits the same colour mode",
        )
    half = (0.5,) * channels_of(train_x)
    normalization = normalization_of(train_x, repr(name)) if config.image_normalization == "training" else ImageNormalization(half, half)
    logger.info(
        "read %s: %d train, %d test images of shape %s, %d classes", name, len(train_y), len(test_y), train_x.shape[1:], len(class_names)
    )
    return DatasetSplits(
        name=name,
        train=LabeledData(kind="image", inputs=train_x, labels=train_y, normalization=normalization),
        test=LabeledData(kind="image", inputs=test_x, labels=test_y, normalization=normalization),
        class_names=class_names,
    )


# --------------------------------------------------------------------------- ImageFolder


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """``class name -> sorted image files`` for the subfolders of ``root`` that hold images (hidden folders skipped)."""
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if files:
            found[folder.name] = files
        else:
            logger.warning("%s: class folder %s holds no PNG/JPEG image; skipped", root, folder.name)
    return found


def _read_images(files: list[Path]) -> list[Any]:
    image = _pillow()
    opened = []
    for path in files:
        try:
            with image.open(path) as handle:
                handle.load()
                opened.append(handle.copy())
        except (OSError, ValueError, image.DecompressionBombError) as error:
            raise ConfigError("data.dataset", f"cannot read image {str(path)!r}: {error}", "remove or replace the file") from None
    return opened


def _read_split(classes: dict[str, list[Path]], class_names: tuple[str, ...]) -> tuple[list[Any], np.ndarray]:
    index = {name: i for i, name in enumerate(class_names)}
    files = [(path, index[name]) for name, paths in classes.items() for path in paths]
    return _read_images([p for p, _ in files]), np.asarray([y for _, y in files], dtype=np.int64)


def load_image_folder(config: DataConfig) -> DatasetSplits:
    """A folder of class subfolders of PNG/JPEG images (the ImageFolder layout), with ``train/`` and ``test/`` or not.

    Raises
    ------
    ConfigError
        ``data.dataset`` when the folder holds no class subfolders with images, or a test class the training split
        lacks, or an unreadable image; ``data.image_size`` when it is 0 and the sizes differ.
    """
    root = Path(config.dataset).expanduser()
    if not root.is_dir():
        raise ConfigError(
            "data.dataset", f"folder {str(root)!r} does not exist", f"check the path (relative paths start from {Path.cwd()})"
        )
    split_roots = (root / "train", root / "test")
    has_splits = all(p.is_dir() and _class_folders(p) for p in split_roots)
    train_classes = _class_folders(split_roots[0] if has_splits else root)
    if not train_classes:
        hint = f"; for a folder of train/test .csv or .jsonl files write hf:{config.dataset}" if any(root.glob("*.*")) else ""
        raise ConfigError("data.dataset", f"folder {str(root)!r} has no class subfolders with PNG/JPEG images", LAYOUT + hint)
    class_names = tuple(train_classes)
    test_classes = _class_folders(split_roots[1]) if has_splits else None
    if test_classes is not None and (unknown := sorted(set(test_classes) - set(class_names))):
        raise ConfigError(
            "data.dataset",
            f"{str(split_roots[1])!r} has classes that {str(split_roots[0])!r} lacks: {', '.join(unknown[:5])}",
            "give train/ a subfolder for every class",
        )
    train_images, train_y = _read_split(train_classes, class_names)
    test_images, test_y = _read_split(test_classes, class_names) if test_classes is not None else ([], np.zeros(0, np.int64))
    # one colour mode and one size for both splits
    arrays = pil_to_arrays(train_images + test_images, config, repr(str(root)))
    train_x, test_x = arrays[: len(train_y)], arrays[len(train_y) :]
    test = (test_x, test_y) if test_classes is not None else None
    return image_splits(config.dataset, (train_x, train_y), test, class_names, config)


# --------------------------------------------------------------------------- .npz


def _as_uint8_images(array: np.ndarray, key: str, where: str) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, 3)`` ``uint8`` from the accepted array forms (see the module docstring)."""
    if array.ndim == 4 and array.shape[1] in (1, COLOUR_CHANNELS) and array.shape[-1] not in (1, COLOUR_CHANNELS):
        array = np.moveaxis(array, 1, -1)  # channels first -> last
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == COLOUR_CHANNELS)) or not len(array):
        raise ConfigError(
            "data.dataset", f"{key} in {where} has shape {array.shape}", "expected images (N, H, W), (N, H, W, 3) or (N, 3, H, W)"
        )
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise ConfigError("data.dataset", f"{key} in {where} holds floats outside [0, 1]", "store pixels as uint8 or floats in [0, 1]")
        return np.rint(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise ConfigError(
        "data.dataset", f"{key} in {where} is {array.dtype} with values outside 0..255", "store pixels as uint8 or floats in [0, 1]"
    )


def load_npz(config: DataConfig) -> DatasetSplits:
    """A ``.npz`` file of image arrays: ``x_train, y_train, x_test, y_test``, or ``x, y`` with a held-out test split.

    Raises
    ------
    ConfigError
        ``data.dataset`` when the file is missing or unreadable, lacks the arrays, or holds arrays of another form.
    """
    from secure_ffm.data.external import encode_labels

    path = Path(config.dataset).expanduser()
    where = repr(str(path))
    if not path.is_file():
        raise ConfigError("data.dataset", f"file {where} does not exist", f"check the path (relative paths start from {Path.cwd()})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise ConfigError("data.dataset", f"cannot read {where}: {error}", "check that it is a .npz file written by numpy.savez") from None
    if all(key in arrays for key in NPZ_SPLIT_KEYS):
        parts = [("x_train", "y_train"), ("x_test", "y_test")]
    elif all(key in arrays for key in NPZ_WHOLE_KEYS):
        parts = [("x", "y")]
    else:
        raise ConfigError(
            "data.dataset",
            f"{where} holds the arrays {', '.join(sorted(arrays)) or 'none'}",
            f"expected {', '.join(NPZ_SPLIT_KEYS)} (or x, y to hold out a test split)",
        )
    images = []
    raw_labels: list[Any] = []
    for x_key, y_key in parts:
        x = _as_uint8_images(arrays[x_key], x_key, where)
        y = np.asarray(arrays[y_key])
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(
                "data.dataset", f"{y_key} in {where} has shape {y.shape} for {len(x)} images", f"store one label per image in {y_key}"
            )
        images.append(_resize_arrays(x, config))
        raw_labels.extend(y.tolist())
    if images[0].shape[1:] != images[-1].shape[1:]:
        raise ConfigError(
            "data.dataset",
            f"x_train and x_test in {where} differ in shape",
            "store both at one size and colour mode, or set data.image_size",
        )
    codes, class_names = encode_labels(raw_labels, key="data.dataset")
    if "class_names" in arrays and all(isinstance(v, int) for v in raw_labels):
        names = tuple(str(n) for n in np.asarray(arrays["class_names"]).tolist())
        if min(raw_labels) >= 0 and max(raw_labels) < len(names):
            codes, class_names = np.asarray(raw_labels, dtype=np.int64), names
    splits = [(images[0], codes[: len(images[0])])]
    if len(images) == 2:
        splits.append((images[1], codes[len(images[0]) :]))
    return image_splits(config.dataset, splits[0], splits[1] if len(splits) == 2 else None, class_names, config)


# --------------------------------------------------------------------------- Hugging Face


def is_image_dataset(split: Any, config: DataConfig) -> bool:
    """Whether a ``datasets.Dataset`` split has the Image column ``data.image_column`` (it is then read as images)."""
    import datasets

    return isinstance(split.features.get(config.image_column), datasets.Image)


def _hf_labels(split: Any, config: DataConfig, where: str) -> list[Any]:
    columns = list(split.column_names)
    if config.label_column not in columns:
        raise ConfigError(
            "data.label_column",
            f"column {config.label_column!r} not in {where} (columns: {', '.join(columns)})",
            "set data.label_column to the column of classes",
        )
    return list(split[config.label_column])


def load_hf_images(name: str, train: Any, test: Any | None, config: DataConfig) -> DatasetSplits:
    """The images and labels of ``hf:`` dataset splits that have an Image column (:func:`is_image_dataset`).

    A ``ClassLabel`` column gives the class names (-1, unlabelled, is dropped); other labels are encoded as in the
    text loader.
    """
    import datasets

    from secure_ffm.data.external import encode_labels

    label_feature = train.features.get(config.label_column)
    parts = [("train", train)] + ([("test", test)] if test is not None else [])
    images: list[Any] = []
    raw: list[Any] = []
    sizes = []
    for split_name, split in parts:
        where = f"{name}[{split_name}]"
        labels = _hf_labels(split, config, where)
        keep = [i for i, y in enumerate(labels) if y is not None and not (isinstance(label_feature, datasets.ClassLabel) and y < 0)]
        if len(keep) < len(labels):
            logger.warning("%s: dropped %d examples without a label", where, len(labels) - len(keep))
        column = split.select(keep)[config.image_column]
        if any(image is None for image in column):
            raise ConfigError("data.image_column", f"column {config.image_column!r} of {where} has missing images", "drop those rows")
        images.extend(column)
        raw.extend(labels[i] for i in keep)
        sizes.append(len(keep))
    if not sizes[0]:
        raise ConfigError(
            "data.train_split", f"split {config.train_split!r} of {name} has no labelled images", "choose a split with labels"
        )
    if isinstance(label_feature, datasets.ClassLabel):
        codes, class_names = np.asarray(raw, dtype=np.int64), tuple(label_feature.names)
    else:
        codes, class_names = encode_labels(raw)
    arrays = pil_to_arrays(images, config, name)
    train_part = (arrays[: sizes[0]], codes[: sizes[0]])
    test_part = (arrays[sizes[0] :], codes[sizes[0] :]) if test is not None else None
    return image_splits(config.dataset, train_part, test_part, class_names, config)
