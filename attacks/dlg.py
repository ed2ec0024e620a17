"""Deep Leakage from Gradients (DLG) and its label-inferring improvement (iDLG).

* ``dlg``: Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019. Random dummy images
  and soft labels are optimized jointly with L-BFGS to minimize the squared L2 distance between
  their gradient and the observed one; no prior, no pixel box.
* ``idlg``: Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients", arXiv
  2001.02610, 2020. The same, but the labels are first read off the last layer's gradient
  (:func:`attacks.labels.infer_labels`; exact for one example) and only the images are optimized.

When the threat model gives the labels both optimize the images only. An update or aggregate is
matched as the gradient it approximates, ``-delta / (lr * local_steps)``, unless
``simulate_local_steps`` is set.

:func:`build_lenet_zhu` builds the small sigmoid network DLG was demonstrated on (weights drawn
uniformly from [-0.5, 0.5], as in the paper's code), for 1x28x28 images: on it iDLG recovers a
single Fashion-MNIST image almost exactly (57-93 dB PSNR in 500 iterations on 6 test images),
while on the project's max-pooling ReLU ``cnn`` it stalls near 16 dB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.image import GradientInversion, InversionSettings
from secure_ffm.models.vision import ImageModel


@dataclass(frozen=True)
class DLGSettings(InversionSettings):
    """DLG's choices: L2 distance, no prior, L-BFGS with step size 1, soft labels optimized jointly."""

    objective: str = "l2"
    prior: str = "none"
    prior_weight: float = 0.0
    optimizer: str = "lbfgs"
    learning_rate: float = 1.0
    signed: bool = False
    lr_decay: bool = False
    boxed: bool = False
    labels: str = "joint"


@dataclass(frozen=True)
class IDLGSettings(DLGSettings):
    """DLG with the labels inferred from the last layer (iDLG)."""

    labels: str = "infer"


class DLG(GradientInversion):
    """Deep Leakage from Gradients (Zhu et al., NeurIPS 2019)."""

    name = "dlg"
    settings_class = DLGSettings
    paper = "Zhu, Liu, Han. Deep Leakage from Gradients. NeurIPS 2019."


class IDLG(GradientInversion):
    """DLG with exact label inference from the last layer (Zhao et al., 2020)."""

    name = "idlg"
    settings_class = IDLGSettings
    paper = "Zhao, Mopuri, Bilen. iDLG: Improved Deep Leakage from Gradients. arXiv:2001.02610, 2020."


class LeNetZhu(nn.Module):
    """DLG's LeNet: three 5x5 convolutions (stride 2, 2, 1) with sigmoids, then a linear ``head``."""

    def __init__(self, num_classes: int = 10, *, width: int = 12, image_size: int = 28) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        side = (image_size + 3) // 4
        self.head = nn.Linear(width * side * side, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixels).flatten(1))


def build_lenet_zhu(num_classes: int = 10, *, seed: int = 0, width: int = 12) -> ImageModel:
    """:class:`LeNetZhu` with every weight and bias uniform in [-0.5, 0.5] from ``seed``, as an :class:`ImageModel`."""
    with torch.random.fork_rng(devices=[]):  # the default initialization is overwritten; leave the global RNG alone
        module = LeNetZhu(num_classes, width=width)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.uniform_(-0.5, 0.5, generator=generator)
    return ImageModel(module, num_classes=num_classes)
