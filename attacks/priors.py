"""Image priors: regularizers added to the gradient-matching objective.

Registered in :data:`PRIORS`:

* ``tv``: anisotropic total variation, the mean absolute difference of neighbouring pixels
  along each axis, as used by Inverting Gradients (Geiping et al., NeurIPS 2020, eq. 4;
  Rudin, Osher and Fatemi, 1992). It favours piecewise-smooth images.
* ``none``: no prior (Deep Leakage from Gradients, Zhu et al., NeurIPS 2019).

:func:`pixel_box` is the hard constraint that goes with them: Geiping et al. project ("box")
the candidate onto the valid pixel range after every step. The range follows from the attacked
model's pixel normalization (:func:`normalization_of`), which comes from its dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.models.vision import UNDECLARED_NORMALIZATION
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


def normalization_of(model: Any) -> ImageNormalization:
    """The pixel normalization of an image model (:attr:`secure_ffm.models.vision.ImageModel.normalization`).

    A model that carries none gets :data:`~secure_ffm.models.vision.UNDECLARED_NORMALIZATION`, what
    :class:`~secure_ffm.models.vision.ImageModel` standardises undeclared images with.
    """
    normalization = getattr(model, "normalization", None)
    return normalization if isinstance(normalization, ImageNormalization) else UNDECLARED_NORMALIZATION


Box = tuple[float, float] | tuple[torch.Tensor, torch.Tensor]
"""``(low, high)``: floats for greyscale, ``(C, 1, 1)`` tensors (broadcasting over ``(B, C, H, W)``) for C channels."""


def pixel_box(normalization: ImageNormalization | None = None) -> Box:
    """The valid range of a normalized pixel: ``(0 - mean) / std`` to ``(1 - mean) / std``, per channel.

    ``normalization`` is the attacked model's (:func:`normalization_of`); when omitted,
    :data:`~secure_ffm.models.vision.UNDECLARED_NORMALIZATION`.
    """
    low, high = (normalization or UNDECLARED_NORMALIZATION).bounds()
    if len(low) == 1:
        return low[0], high[0]
    return torch.tensor(low).view(-1, 1, 1), torch.tensor(high).view(-1, 1, 1)
