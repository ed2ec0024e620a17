"""Small image classifiers for 1x28x28 greyscale inputs (Fashion-MNIST, digits): ``cnn`` and ``vit``.

Both are built only from layers that Opacus computes per-sample gradients for
(``Conv2d``, ``Linear``, ``LayerNorm``, ``Embedding``): no BatchNorm, whose batch
statistics mix examples and break DP-SGD, and no ``nn.MultiheadAttention``.
Their last layer is called ``head``, so ``finetune = "head"`` trains and sends
exactly ``head.weight`` and ``head.bias``.

Pixels are standardised with the dataset's :class:`~secure_ffm.data.normalization.ImageNormalization`,
which the data carries and the model keeps (:attr:`ImageModel.normalization`), so that an attack
given only the model maps its reconstructions back to pixels the same way.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.data.builtin import FASHION_MNIST_NORMALIZATION
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.models.finetune import configure_finetune
from secure_ffm.models.registry import register_model

logger = logging.getLogger(__name__)

IMAGE_SIZE = 28
IMAGE_CHANNELS = 1
UNDECLARED_NORMALIZATION = FASHION_MNIST_NORMALIZATION
"""Used for images that declare no normalization (built by hand) when the model has none yet: the
Fashion-MNIST statistics, the reference dataset of these models."""


class SmallCNN(nn.Module):
    """conv 3x3 (16) -> pool -> conv 3x3 (32) -> pool -> fc 128 -> head; ReLU throughout.

    About 207k parameters; an epoch of the 60k Fashion-MNIST images takes about
    10-13 s on two CPU cores, and two epochs reach about 89% test accuracy.
    """

    def __init__(self, num_classes: int, *, channels: tuple[int, int] = (16, 32), hidden: int = 128) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.fc = nn.Linear(c2 * (IMAGE_SIZE // 4) ** 2, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(pixels)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
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

    def __init__(self, num_classes: int, *, patch_size: int = 7, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        if IMAGE_SIZE % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide {IMAGE_SIZE}")
        self.num_patches = (IMAGE_SIZE // patch_size) ** 2
        self.patch = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)
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
    """A classifier of 28x28 ``uint8`` greyscale images; ``module.forward(pixels)`` gives logits.

    :attr:`normalization` is how the model standardises pixels. It is given at construction, or
    taken from the first data the model encodes (the dataset's
    :attr:`~secure_ffm.data.base.LabeledData.normalization`, or :data:`UNDECLARED_NORMALIZATION`
    for images that declare none). From the first encoding on it is fixed: data normalized
    differently is refused, since the model's inputs would no longer mean the same.
    """

    data_kind = "image"

    def __init__(self, module: nn.Module, *, num_classes: int, normalization: ImageNormalization | None = None) -> None:
        self.module = module
        self.num_classes = num_classes
        self._normalization = normalization
        self._fixed = False

    @property
    def normalization(self) -> ImageNormalization:
        """The pixel normalization of the model's inputs (:data:`UNDECLARED_NORMALIZATION` until one is known)."""
        return self._normalization if self._normalization is not None else UNDECLARED_NORMALIZATION

    @normalization.setter
    def normalization(self, value: ImageNormalization) -> None:
        if self._fixed and value != self.normalization:
            raise ValueError(f"the model already encoded data normalized with {self.normalization}; cannot switch to {value}")
        self._normalization = value

    def _adopt(self, declared: ImageNormalization | None) -> ImageNormalization:
        """The normalization to encode with: the model's, or (before the first encoding) the data's."""
        if declared is not None and declared.channels != IMAGE_CHANNELS:
            raise ValueError(f"the model reads {IMAGE_CHANNELS}-channel images; the data's normalization has {declared.channels} channels")
        if not self._fixed and self._normalization is None:
            if declared is None:
                logger.debug("images without a declared normalization: standardising with %s", UNDECLARED_NORMALIZATION)
            self._normalization = declared
        elif declared is not None and declared != self.normalization:
            raise ValueError(f"the data is normalized with {declared} but the model with {self.normalization}")
        self._fixed = True
        return self.normalization

    def encode(self, data: LabeledData) -> EncodedData:
        """Scale to [0, 1] and standardise with :attr:`normalization`: ``(N, 1, 28, 28)`` float32."""
        if data.kind != "image":
            raise ValueError(f"an image model cannot encode {data.kind} data")
        images = np.asarray(data.inputs)
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), got {images.dtype} {images.shape}")
        _check_labels(data.labels, self.num_classes)
        normalization = self._adopt(data.normalization)
        pixels = torch.from_numpy(images.astype(np.float32)).div_(255.0)
        pixels = normalization.normalize(pixels, inplace=True).unsqueeze(1)
        return EncodedData(tensors={"pixels": pixels}, labels=torch.from_numpy(data.labels.copy()))

    def make_batch(self, encoded: EncodedData, indices: np.ndarray) -> Batch:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return Batch(inputs={"pixels": encoded.tensors["pixels"][index]}, labels=encoded.labels[index])


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def _image_model(module: nn.Module, config: ModelConfig, *, num_classes: int) -> ImageModel:
    configure_finetune(module, config, head=module.head, adapted=module, what=f"the {config.arch} model")
    return ImageModel(module, num_classes=num_classes)


@register_model("cnn", data_kind="image")
def build_cnn(config: ModelConfig, *, num_classes: int, max_length: int) -> ImageModel:
    """``cnn``: :class:`SmallCNN`; ``finetune`` is ``full`` or ``head``."""
    if config.finetune == "lora":
        raise ConfigError("model.finetune", "lora applies to hf-text and vit models, not cnn", "use full or head")
    return _image_model(SmallCNN(num_classes), config, num_classes=num_classes)


@register_model("vit", data_kind="image")
def build_vit(config: ModelConfig, *, num_classes: int, max_length: int) -> ImageModel:
    """``vit``: :class:`SmallViT` from ``vit_*``; ``lora`` adapts its attention layers (``query``, ``key``, ``value``, ``output``)."""
    module = SmallViT(
        num_classes,
        patch_size=config.vit_patch_size,
        dim=config.vit_dim,
        depth=config.vit_depth,
        heads=config.vit_heads,
    )
    return _image_model(module, config, num_classes=num_classes)
