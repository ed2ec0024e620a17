"""Small image classifiers, ``cnn`` and ``vit``, for greyscale or RGB images of the dataset's size
(1x28x28 for Fashion-MNIST and digits; the channels and size come from the data, :attr:`DatasetSplits.image_shape`).

Both are built only from layers that Opacus computes per-sample gradients for
(``Conv2d``, ``Linear``, ``LayerNorm``, ``Embedding``): no BatchNorm, whose batch
statistics mix examples and break DP-SGD, and no ``nn.MultiheadAttention``.
Their last layer is called ``head``, so ``finetune = "head"`` trains and sends
exactly ``head.weight`` and ``head.bias``.

Pixels are standardised with the dataset's :class:`~secure_ffm.data.normalization.ImageNormalization`,
which the data carries and the model keeps (:attr:`ImageModel.normalization`), so that an attack
given only the model maps its reconstructions back to pixels the same way.

FFM pre-training's export (:meth:`ImageModel.export_pretrained`) writes the model as ``model.safetensors`` and a
``config.json`` (:data:`EXPORT_FORMAT`); ``model.name_or_path`` naming such a folder starts the next run from it
(:func:`load_pretrained`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import COLOUR_CHANNELS, ImageShape, LabeledData
from secure_ffm.data.builtin import FASHION_MNIST_NORMALIZATION
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.models.finetune import LORA_MARKER, configure_finetune, short_reason
from secure_ffm.models.registry import DEFAULT_IMAGE_SHAPE, register_model
from secure_ffm.models.text import BUNDLED_MINILM_NAMES

logger = logging.getLogger(__name__)

IMAGE_SIZE = 28
IMAGE_CHANNELS = 1
UNDECLARED_NORMALIZATION = FASHION_MNIST_NORMALIZATION
"""Used for images that declare no normalization (built by hand) when the model has none yet: the
Fashion-MNIST statistics, the reference dataset of these models."""


def standardise(encoded: EncodedData, codes: torch.Tensor) -> torch.Tensor:
    """uint8 image ``codes`` (B, C, H, W) of ``encoded`` (:meth:`ImageModel.encode`) as float32 pixels scaled to
    [0, 1] and standardised with the encoding's normalization."""
    return encoded.normalization.normalize(codes.to(torch.float32).div_(255.0), inplace=True)


def channels_last(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` (B, C, H, W) in the channels-last memory format, so that a convolution on them writes its output in
    that format too. One channel: the same memory, restrided (a view, no copy; ``contiguous(memory_format=...)``
    leaves a one-channel tensor's strides as they are, and oneDNN then writes an NCHW output); several: a copy."""
    if pixels.dim() == 4 and pixels.shape[1] == 1 and pixels.is_contiguous():
        batch, _, height, width = pixels.shape
        return pixels.view(batch, height, width, 1).permute(0, 3, 1, 2)
    return pixels.contiguous(memory_format=torch.channels_last)


class SmallCNN(nn.Module):
    """conv 3x3 (16) -> pool -> conv 3x3 (32) -> pool -> fc 128 -> head; ReLU throughout.

    About 207k parameters on 1x28x28 images; an epoch of the 60k Fashion-MNIST images takes about
    10-13 s on two CPU cores, and two epochs reach about 89% test accuracy. ``in_channels`` and
    ``image_size`` (height, width; each at least 4) size the first convolution and ``fc``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = IMAGE_CHANNELS,
        image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        height, width = image_size
        if height < 4 or width < 4:
            raise ValueError(f"the CNN pools twice by 2: images must be at least 4x4, got {height}x{width}")
        c1, c2 = channels
        self.architecture = {"channels": [c1, c2], "hidden": hidden}
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.fc = nn.Linear(c2 * (height // 4) * (width // 4), hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # relu(max_pool(x)) = max_pool(relu(x)), with the same gradient (the first maximum of a window is the same
        # positive entry, and a window with no positive entry passes none): the ReLU then touches a quarter of the values.
        # The channels-last layout from conv1's output on: the pools run in it (torch's NCHW max-pool kernel is slow for
        # few channels) and conv2 reads and writes it, so no conversion back (flatten copies into fc's NCHW order).
        # A step at batch 32, one thread: 4.7-5.1 ms against 5.9-6.1 ms with NCHW convolutions around channels-last pools
        # (2026-12-06); conv2's sums then run in another order, so gradients differ from the NCHW model's by about 1e-8.
        # The pixels go in channels-last too (a view for one channel, :func:`channels_last`), so conv1 writes its output
        # in that format and the conversion after it costs nothing: a step at batch 32 took 4.95 ms against 5.54 ms, at
        # 64 8.2 against 9.4 ms, book-keeping DP-SGD 11.8 against 12.5 ms at 64 (2026-12-06, evening; gradients again
        # equal to float rounding, about 1e-8).
        x = F.relu(F.max_pool2d(self.conv1(channels_last(pixels)).contiguous(memory_format=torch.channels_last), 2, 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2, 2))
        x = F.relu(self.fc(x.flatten(1)))
        return self.head(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention from plain ``Linear`` layers (``query``, ``key``, ``value``, ``output``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.output(mixed)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SmallViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al., arXiv 2010.11929) without dropout.

    The class token and the learned position embedding are ``nn.Embedding`` layers
    looked up with one row of indices per example, so Opacus sees ordinary
    embedding layers with a batch dimension rather than bare parameters.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = IMAGE_CHANNELS,
        image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
        patch_size: int = 7,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        height, width = image_size
        if height % patch_size or width % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the image size {height}x{width}")
        self.architecture = {"patch_size": patch_size, "dim": dim, "depth": depth, "heads": heads}
        self.num_patches = (height // patch_size) * (width // patch_size)
        self.patch = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Embedding(1, dim)
        self.position = nn.Embedding(self.num_patches + 1, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = pixels.shape[0]
        patches = self.patch(pixels).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
        zeros = torch.zeros(batch, 1, dtype=torch.long, device=pixels.device)
        x = torch.cat([self.cls_token(zeros), patches], dim=1)
        positions = torch.arange(self.num_patches + 1, device=pixels.device).repeat(batch, 1)
        x = x + self.position(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class ImageModel(FederatedModel):
    """A classifier of ``uint8`` images of one shape; ``module.forward(pixels)`` gives logits.

    ``image_shape`` is ``(channels, height, width)``: 1 channel reads ``(N, H, W)`` greyscale arrays, 3 reads
    ``(N, H, W, 3)`` RGB arrays (:class:`~secure_ffm.data.base.LabeledData`).

    :attr:`normalization` is how the model standardises pixels. It is given at construction, or
    taken from the first data the model encodes (the dataset's
    :attr:`~secure_ffm.data.base.LabeledData.normalization`, or :data:`UNDECLARED_NORMALIZATION`
    for images that declare none). From the first encoding on it is fixed: data normalized
    differently is refused, since the model's inputs would no longer mean the same. A pre-trained model
    (``keep_normalization``) keeps the normalization it was pre-trained with and standardises every dataset
    with it, as fine-tuning from a pre-trained vision model does.
    """

    data_kind = "image"

    def __init__(
        self,
        module: nn.Module,
        *,
        num_classes: int,
        normalization: ImageNormalization | None = None,
        image_shape: ImageShape = DEFAULT_IMAGE_SHAPE,
        arch: str | None = None,
        keep_normalization: bool = False,
    ) -> None:
        if image_shape[0] not in (1, COLOUR_CHANNELS):
            raise ValueError(f"image models read 1 or {COLOUR_CHANNELS} channels, got {image_shape[0]}")
        if keep_normalization and normalization is None:
            raise ValueError("keep_normalization needs the normalization to keep")
        self.module = module
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.arch = arch
        self._normalization = normalization
        self._fixed = False
        self._keep = keep_normalization
        self._told = False

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def normalization(self) -> ImageNormalization:
        """The pixel normalization of the model's inputs (:data:`UNDECLARED_NORMALIZATION` until one is known)."""
        return self._normalization if self._normalization is not None else UNDECLARED_NORMALIZATION

    @normalization.setter
    def normalization(self, value: ImageNormalization) -> None:
        if (self._fixed or self._keep) and value != self.normalization:
            raise ValueError(f"the model already encoded data normalized with {self.normalization}; cannot switch to {value}")
        self._normalization = value

    def _adopt(self, declared: ImageNormalization | None) -> ImageNormalization:
        """The normalization to encode with: the model's, or (before the first encoding) the data's."""
        if declared is not None and declared.channels != self.channels:
            raise ValueError(f"the model reads {self.channels}-channel images; the data's normalization has {declared.channels} channels")
        if self._keep:
            if declared is not None and declared != self.normalization and not self._told:
                logger.info("standardising the data (its own statistics %s) with the pre-trained model's %s", declared, self.normalization)
                self._told = True
        elif not self._fixed and self._normalization is None:
            if declared is None:
                logger.debug("images without a declared normalization: standardising with %s", UNDECLARED_NORMALIZATION)
            self._normalization = declared
        elif declared is not None and declared != self.normalization:
            raise ValueError(f"the data is normalized with {declared} but the model with {self.normalization}")
        self._fixed = True
        return self.normalization

    def encode(self, data: LabeledData) -> EncodedData:
        """The images as ``(N, C, H, W)`` uint8 codes and :attr:`normalization`; :meth:`make_batch` scales a batch to
        [0, 1] and standardises it (:func:`standardise`).

        Kept as uint8, the data takes a quarter of the memory of float32 pixels (32,000 Fashion-MNIST images: 25 MB
        against 100 MB, shared by forked workers), and no 100 MB tensor is written at start-up (it took 25-50 ms here,
        and 0.2 s when the kernel had to compact memory for its huge pages). A batch's values are bitwise those of
        standardising the whole set at once, as before 2026-12-06: the same elementwise float32 operations.
        """
        if data.kind != "image":
            raise ValueError(f"an image model cannot encode {data.kind} data")
        images = np.asarray(data.inputs)
        channels, height, width = self.image_shape
        expected = (height, width) if channels == 1 else (height, width, channels)
        if images.dtype != np.uint8 or images.shape[1:] != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"expected uint8 images of shape (N, {shape}), got {images.dtype} {images.shape}")
        _check_labels(data.labels, self.num_classes)
        normalization = self._adopt(data.normalization)
        if channels == 1:
            # a copy, unless the array already owns its bytes (a subset read out of the file's map): never a file's map,
            # and never a second 25 MB of fresh pages at start-up for 32,000 images (about 40 ms of page faults here)
            owned = images.flags.owndata and images.flags.c_contiguous and images.flags.writeable and type(images) is np.ndarray
            codes = torch.from_numpy(images if owned else np.array(images, dtype=np.uint8, order="C")).unsqueeze(1)
        else:
            codes = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.uint8))
        return EncodedData(tensors={"pixels": codes}, labels=torch.from_numpy(data.labels.copy()), normalization=normalization)

    def make_batch(self, encoded: EncodedData, indices: np.ndarray) -> Batch:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return Batch(inputs={"pixels": standardise(encoded, encoded.tensors["pixels"][index])}, labels=encoded.labels[index])

    export_lora_choices = ("merged",)
    """``ffm.export_lora`` values this model's export supports (its own format merges LoRA adapters)."""

    def export_pretrained(self, folder: Path, *, lora: str = "merged") -> None:
        """Write ``folder/model.safetensors`` (every weight, LoRA adapters merged, the head included) and
        ``folder/config.json`` (:data:`EXPORT_FORMAT`: arch, sizes, image shape, classes, normalization), so that
        ``model.name_or_path = "<folder>"`` starts the next ``cnn``/``vit`` run from it (:func:`load_pretrained`)."""
        if lora not in self.export_lora_choices:
            raise ValueError(f"image models export with LoRA merged, not {lora!r}")
        if self.arch is None:
            raise ValueError("a model built without its arch name cannot be exported")
        if self.normalization.channels != self.channels:
            raise ValueError(f"the {self.channels}-channel model has no normalization of its own yet: encode its data before exporting")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: value.detach().cpu().contiguous() for name, value in merged_state_dict(self.module).items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
        document = {
            "format": EXPORT_FORMAT,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "architecture": dict(getattr(self.module, "architecture", {})),
            "normalization": self.normalization.to_dict(),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


# --------------------------------------------------------------------------- export and continuation

EXPORT_FORMAT = "secure-ffm-image-model-v1"
"""``config.json``'s ``format`` in a folder written by :meth:`ImageModel.export_pretrained`."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE_KEYS = {"patch_size": "model.vit_patch_size", "dim": "model.vit_dim", "depth": "model.vit_depth", "heads": "model.vit_heads"}
"""The ``[model]`` key of each size in an export's ``architecture`` (sizes without a key are fixed by the arch)."""
_EXPORT_FIX = "give RUN_DIR/model of a cnn or vit run with [ffm] export = true"


@dataclass(frozen=True)
class PretrainedImageModel:
    """A folder written by :meth:`ImageModel.export_pretrained`, read and checked (weights not yet loaded)."""

    folder: Path
    arch: str
    num_classes: int
    image_shape: ImageShape
    architecture: dict[str, Any]
    normalization: ImageNormalization


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state with every peft LoRA layer merged into its base weight (``W + scale * B @ A``) and the
    adapters dropped: the state of the plain architecture. ``module`` itself is left as it was."""
    if not any(LORA_MARKER in name for name, _ in module.named_parameters()):
        return dict(module.state_dict())
    merged = copy.deepcopy(module)
    for layer in merged.modules():
        if hasattr(layer, "base_layer") and hasattr(layer, "merge"):
            layer.merge()
    return {name.replace(".base_layer.", "."): value for name, value in merged.state_dict().items() if LORA_MARKER not in name}


def starts_fresh(config: ModelConfig) -> bool:
    """Whether a ``cnn``/``vit`` run starts from fresh seeded weights: ``model.name_or_path`` is left at the text
    default (an image model has no Hub name); any other value must be an exported folder."""
    return config.name_or_path in BUNDLED_MINILM_NAMES or not config.name_or_path


def read_pretrained(config: ModelConfig) -> PretrainedImageModel:
    """The export that ``model.name_or_path`` names; anything that does not load is a ConfigError on that key."""
    name = config.name_or_path
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            "model.name_or_path", f"{name!r} is not a folder: a {config.arch} model starts from an exported folder", _EXPORT_FIX
        )
    try:
        document = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = getattr(error, "strerror", None) or short_reason(error)
        raise ConfigError("model.name_or_path", f"cannot read {CONFIG_FILE} in {name!r}: {reason}", _EXPORT_FIX) from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ConfigError(
            "model.name_or_path",
            f"{name!r} is not an image model exported by secure-ffm ({CONFIG_FILE} has no format {EXPORT_FORMAT!r})",
            _EXPORT_FIX,
        )
    try:
        shape = tuple(int(v) for v in document["image_shape"])
        if len(shape) != 3:
            raise ValueError(f"image_shape {shape}")
        normalization = ImageNormalization(**document["normalization"])
        if normalization.channels != shape[0]:
            raise ValueError(f"{normalization.channels}-channel normalization for {shape[0]}-channel images")
        pretrained = PretrainedImageModel(
            folder=folder,
            arch=str(document["arch"]),
            num_classes=int(document["num_classes"]),
            image_shape=shape,  # type: ignore[arg-type]
            architecture=dict(document["architecture"]),
            normalization=normalization,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(
            "model.name_or_path", f"{CONFIG_FILE} in {name!r} is incomplete or malformed: {short_reason(error)}", _EXPORT_FIX
        ) from None
    if pretrained.arch != config.arch:
        raise ConfigError(
            "model.arch", f"{config.arch!r}, but the model in {name!r} is a {pretrained.arch!r}", f'set model.arch = "{pretrained.arch}"'
        )
    return pretrained


def check_pretrained_fits(pretrained: PretrainedImageModel, module: nn.Module, image_shape: ImageShape, config: ModelConfig) -> None:
    """Refuse an export whose sizes or image shape differ from what this run builds, naming the key to change."""
    name = config.name_or_path
    channels, height, width = image_shape
    if pretrained.image_shape[0] != channels:
        raise ConfigError(
            "data.dataset",
            f"the data's images have {channels} channel(s) but the model in {name!r} "
            f"was pre-trained on {pretrained.image_shape[0]}-channel images",
            "continue on images of the same colour mode (greyscale or RGB)",
        )
    if pretrained.image_shape[1:] != (height, width):
        h, w = pretrained.image_shape[1:]
        fix = f"set data.image_size = {h}" if h == w else f"give images of {h}x{w} pixels"
        raise ConfigError("data.image_size", f"the data's images are {height}x{width} but the model in {name!r} reads {h}x{w}", fix)
    built = dict(getattr(module, "architecture", {}))
    for key, value in pretrained.architecture.items():
        if built.get(key) != value:
            config_key = ARCHITECTURE_KEYS.get(key, "model.name_or_path")
            raise ConfigError(
                config_key, f"is {built.get(key)!r} but the model in {name!r} has {key} = {value!r}", f"set {config_key} = {value!r}"
            )


def load_pretrained(pretrained: PretrainedImageModel, module: nn.Module) -> None:
    """Load the export's weights into the freshly built (seeded) ``module``. A head of another size (another number
    of classes) keeps its fresh seeded initialisation, and the log says so; any other difference is a ConfigError."""
    name = str(pretrained.folder)
    try:
        state = load_file(str(pretrained.folder / WEIGHTS_FILE))
    except Exception as error:  # noqa: BLE001 - a missing, truncated or foreign file all mean "cannot load"
        raise ConfigError("model.name_or_path", f"cannot read {WEIGHTS_FILE} in {name!r}: {short_reason(error)}", _EXPORT_FIX) from None
    fresh = module.state_dict()
    missing, unexpected = sorted(set(fresh) - set(state)), sorted(set(state) - set(fresh))
    if missing or unexpected:
        raise ConfigError(
            "model.name_or_path",
            f"the weights in {name!r} do not fit the {pretrained.arch} model (missing {missing[:3]}, unexpected {unexpected[:3]})",
            _EXPORT_FIX,
        )
    reinitialised = [key for key in fresh if key.startswith("head.") and state[key].shape != fresh[key].shape]
    for key in reinitialised:
        state[key] = fresh[key]
    wrong = [key for key in fresh if state[key].shape != fresh[key].shape]
    if wrong:
        raise ConfigError(
            "model.name_or_path", f"the weights in {name!r} have other shapes ({wrong[0]}: {tuple(state[wrong[0]].shape)})", _EXPORT_FIX
        )
    module.load_state_dict(state, strict=True)
    if reinitialised:
        logger.info(
            "started from %s; its head has %d classes, this run's %d: the head is re-initialised (seeded)",
            name,
            pretrained.num_classes,
            int(fresh["head.weight"].shape[0]),
        )
    else:
        logger.info("started from the pre-trained %s model in %s (head included)", pretrained.arch, name)


def image_model(build: Callable[[], nn.Module], config: ModelConfig, *, num_classes: int, image_shape: ImageShape) -> ImageModel:
    """Build the module (seeded, by :func:`build_model`), start it from ``model.name_or_path`` when that names an
    export, then set what it trains (LoRA adapters go on the loaded weights)."""
    pretrained = None if starts_fresh(config) else read_pretrained(config)
    module = build()
    if pretrained is not None:
        check_pretrained_fits(pretrained, module, image_shape, config)
        load_pretrained(pretrained, module)
    configure_finetune(module, config, head=module.head, adapted=module, what=f"the {config.arch} model")
    return ImageModel(
        module,
        num_classes=num_classes,
        image_shape=image_shape,
        arch=config.arch,
        normalization=pretrained.normalization if pretrained is not None else None,
        keep_normalization=pretrained is not None,
    )


@register_model("cnn", data_kind="image", lora=False)
def build_cnn(config: ModelConfig, *, num_classes: int, max_length: int, image_shape: ImageShape) -> ImageModel:
    """``cnn``: :class:`SmallCNN` for ``image_shape``; ``finetune`` is ``full`` or ``head``."""
    channels, height, width = image_shape
    if height < 4 or width < 4:
        raise ConfigError(
            "data.image_size", f"the cnn reads images of at least 4x4 pixels, got {height}x{width}", "set data.image_size = 28"
        )
    return image_model(
        lambda: SmallCNN(num_classes, in_channels=channels, image_size=(height, width)),
        config,
        num_classes=num_classes,
        image_shape=image_shape,
    )


@register_model("vit", data_kind="image")
def build_vit(config: ModelConfig, *, num_classes: int, max_length: int, image_shape: ImageShape) -> ImageModel:
    """``vit``: :class:`SmallViT` from ``vit_*`` for ``image_shape``; ``lora`` adapts its attention layers (``query``,
    ``key``, ``value``, ``output``)."""
    channels, height, width = image_shape
    patch = config.vit_patch_size
    if height % patch or width % patch:
        common = math.gcd(height, width)
        divisors = [d for d in range(2, common + 1) if common % d == 0][:4]
        fix = f"use a divisor of {common}, e.g. {', '.join(map(str, divisors))}" if divisors else "set data.image_size to a multiple of it"
        raise ConfigError("model.vit_patch_size", f"{patch} does not divide the image size {height}x{width}", fix)

    def build() -> nn.Module:
        return SmallViT(
            num_classes,
            in_channels=channels,
            image_size=(height, width),
            patch_size=patch,
            dim=config.vit_dim,
            depth=config.vit_depth,
            heads=config.vit_heads,
        )

    return image_model(build, config, num_classes=num_classes, image_shape=image_shape)
