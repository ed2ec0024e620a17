"""Every example of an image model's encoded data as the model reads it (images are stored as uint8 codes)."""

import numpy as np
import torch


def all_pixels(model, encoded) -> torch.Tensor:
    """``(N, C, H, W)`` standardised float32 pixels: one batch of every example, through ``model.make_batch``."""
    return model.make_batch(encoded, np.arange(len(encoded))).inputs["pixels"]
