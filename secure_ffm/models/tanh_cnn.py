"""``tanh-cnn``: the small tanh CNN that DP-SGD trains well (Papernot et al., AAAI 2021, "Tempered Sigmoid
Activations for Deep Learning with Differential Privacy").

Why a second CNN. Under DP-SGD every example's gradient is clipped to ``privacy.max_grad_norm`` and the noise is
added to every parameter, so the noise grows with the number of parameters while the signal does not, and an
unbounded activation (ReLU) lets the gradient norms explode and the clipping throw most of the signal away. The
tempered-sigmoid paper keeps the model small (about 26k parameters here, against 207k for ``cnn``, whose fully
connected layer alone has 200k) and bounds the activations with tanh; on Fashion-MNIST it reported 86.1% at
ε = 2.93, centrally. Measured here (benchmarks/privacy_utility.py, README, seeds 0-2): distributed DP-SGD over 20
clients at ε = 3 on all 60k images reaches 84.7 ± 0.1% with it (85.0% without DP in 10 FedAvg rounds; ``cnn``
without DP: 87.0%).

Architecture (TensorFlow Privacy's and Opacus' MNIST model, tanh throughout): conv 8x8 stride 2 (16) -> max pool
2x2 stride 1 -> conv 4x4 stride 2 (32) -> max pool 2x2 stride 1 -> fc 32 -> head. Like ``cnn``, it has no
BatchNorm, so Opacus' per-example gradients and the masking protocol's fixed-point updates apply unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import ImageShape
from secure_ffm.errors import ConfigError
from secure_ffm.models.registry import register_model
from secure_ffm.models.vision import IMAGE_CHANNELS, IMAGE_SIZE, ImageModel, channels_last, image_model

MIN_IMAGE_SIZE = 12
"""The two stride-2 convolutions and the two stride-1 pools leave a 1x1 map at 12x12 pixels."""


def _feature_size(size: int) -> int:
    """Height (or width) of the feature map before ``fc`` for an input of ``size`` pixels."""
    size = (size + 2 * 3 - 8) // 2 + 1  # conv1: 8x8, stride 2, padding 3
    size -= 1  # pool: 2x2, stride 1
    size = (size - 4) // 2 + 1  # conv2: 4x4, stride 2
    return size - 1  # pool: 2x2, stride 1


class TanhCNN(nn.Module):
    """conv 8x8/2 (16) -> pool -> conv 4x4/2 (32) -> pool -> fc 32 -> head; tanh throughout.

    About 26k parameters on 1x28x28 images (a 4x4x32 map before ``fc``).
    """

    CHANNELS = (16, 32)
    HIDDEN = 32

    def __init__(
        self, num_classes: int, *, in_channels: int = IMAGE_CHANNELS, image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
    ) -> None:
        super().__init__()
        height, width = image_size
        if min(height, width) < MIN_IMAGE_SIZE:
            raise ValueError(f"the tanh CNN reads images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got {height}x{width}")
        (c1, c2), hidden = self.CHANNELS, self.HIDDEN
        self.architecture = {"channels": [c1, c2], "hidden": hidden}
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=8, stride=2, padding=3)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=4, stride=2)
        self.fc = nn.Linear(c2 * _feature_size(height) * _feature_size(width), hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # channels-last from conv1's output on, as the ``cnn`` (secure_ffm.models.vision.SmallCNN.forward): the stride-1
        # pools and conv2 run in it. A step at batch 64, one thread: 4.6 ms against 5.8 ms with NCHW convolutions around
        # channels-last pools, and the book-keeping DP-SGD step 7.6 against 8.3 ms (2026-12-06)
        x = F.max_pool2d(torch.tanh(self.conv1(channels_last(pixels)).contiguous(memory_format=torch.channels_last)), 2, 1)
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2, 1)
        x = torch.tanh(self.fc(x.flatten(1)))
        return self.head(x)


@register_model("tanh-cnn", data_kind="image", lora=False)
def build_tanh_cnn(config: ModelConfig, *, num_classes: int, max_length: int, image_shape: ImageShape) -> ImageModel:
    """``tanh-cnn``: :class:`TanhCNN` for ``image_shape``; ``finetune`` is ``full`` or ``head``."""
    channels, height, width = image_shape
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ConfigError(
            "data.image_size",
            f"the tanh-cnn reads images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels, got {height}x{width}",
            "set data.image_size = 28",
        )
    return image_model(
        lambda: TanhCNN(num_classes, in_channels=channels, image_size=(height, width)),
        config,
        num_classes=num_classes,
        image_shape=image_shape,
    )
