"""Image priors: regularizers added to the gradient-matching objective.

Registered in :data:`PRIORS`:

* ``tv``: anisotropic total variation, the mean absolute difference of neighbouring pixels
  along each axis, as used by Inverting Gradients (Geiping et al., NeurIPS 2020, eq. 4;
  Rudin, Osher and Fatemi, 1992). It favours piecewise-smooth images.
* ``none``: no prior (Deep Leakage from Gradients, Zhu et al., NeurIPS 2019).

:func:`pixel_box` is the hard constraint that goes with them: Geiping et al. project ("box")
the candidate onto the valid pixel range after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from secure_ffm.models.vision import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from secure_ffm.registry import Registry

Prior = Callable[[torch.Tensor], torch.Tensor]
"""``prior(images)``: a scalar penalty of a ``(B, C, H, W)`` batch (lower is more plausible)."""

PRIORS: Registry[Prior] = Registry("prior")


@PRIORS.register("tv")
def total_variation(images: torch.Tensor) -> torch.Tensor:
    """``mean |x[h+1, w] - x[h, w]| + mean |x[h, w+1] - x[h, w]|`` over the batch."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dx + dy


@PRIORS.register("none")
def no_prior(images: torch.Tensor) -> torch.Tensor:
    return images.new_zeros(())


def pixel_box(*, mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD) -> tuple[float, float]:
    """The valid range of a normalized pixel: ``(0 - mean) / std`` to ``(1 - mean) / std``."""
    return (0.0 - mean) / std, (1.0 - mean) / std
