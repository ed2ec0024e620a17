"""How a dataset's pixels are standardised before a model sees them.

An image source declares an :class:`ImageNormalization` (per-channel mean and standard
deviation of its pixels scaled to [0, 1]); it travels with the data
(:attr:`~secure_ffm.data.base.LabeledData.normalization`), the image model standardises with
it and keeps it (:attr:`~secure_ffm.models.vision.ImageModel.normalization`), and the
attacks, metrics and pictures map reconstructions back to pixels with the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the data modules import no torch: reading a dataset needs none
    import torch


@dataclass(frozen=True)
class ImageNormalization:
    """Per-channel standardisation of pixels in [0, 1]: ``(x - mean[c]) / std[c]``.

    Parameters
    ----------
    mean, std:
        One value per channel (one for greyscale); every ``std`` is positive.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if not mean or len(mean) != len(std):
            raise ValueError(f"need one mean and one std per channel, got {len(mean)} means and {len(std)} stds")
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"means must be finite and stds finite and positive, got mean {mean}, std {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def of_images(cls, images: np.ndarray, *, decimals: int = 4) -> ImageNormalization:
        """The mean and std of ``uint8`` images (``(N, H, W)`` greyscale or ``(N, C, H, W)``) scaled to [0, 1], rounded.

        Computed in float64 over every pixel of every image (per channel); rounded to ``decimals``
        places so that the constants are readable and stable across platforms.
        """
        pixels = np.asarray(images, dtype=np.float64) / 255.0
        if pixels.ndim == 3:
            pixels = pixels[:, None]
        if pixels.ndim != 4 or not len(pixels):
            raise ValueError(f"expected images of shape (N, H, W) or (N, C, H, W), got {pixels.shape}")
        axes = (0, 2, 3)
        mean = pixels.mean(axis=axes)
        std = pixels.std(axis=axes)
        return cls(mean=tuple(round(float(m), decimals) for m in mean), std=tuple(round(float(s), decimals) for s in std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _per_channel(self, values: tuple[float, ...], like: torch.Tensor) -> float | torch.Tensor:
        """A scalar for one channel (the arithmetic of the greyscale models stays bit-for-bit what it was), else ``(C, 1, 1)``."""
        if self.channels == 1:
            return values[0]
        if like.dim() < 3 or like.shape[-3] != self.channels:
            raise ValueError(f"expected images with {self.channels} channels on axis -3, got shape {tuple(like.shape)}")
        import torch

        return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)

    def normalize(self, pixels: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """``(pixels - mean) / std`` per channel; ``pixels`` are in [0, 1] with channels on axis -3 (any for greyscale)."""
        mean, std = self._per_channel(self.mean, pixels), self._per_channel(self.std, pixels)
        if inplace:
            return pixels.sub_(mean).div_(std)
        return pixels.sub(mean).div(std)

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """``normalized * std + mean`` per channel (not clipped), in ``normalized``'s dtype."""
        mean, std = self._per_channel(self.mean, normalized), self._per_channel(self.std, normalized)
        return normalized * std + mean

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per channel, the normalized values of pixel 0 and pixel 1: ``(0 - mean) / std`` and ``(1 - mean) / std``."""
        low = tuple((0.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        high = tuple((1.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return low, high

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}
