"""Pictures of an audit: originals above reconstructions (images), or a side-by-side table (text)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import GroundTruth, Reconstruction
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.models.vision import UNDECLARED_NORMALIZATION
from secure_ffm.run.checkpoint import write_atomically, write_private_text


def to_pixels(normalized: torch.Tensor, normalization: ImageNormalization | None = None) -> np.ndarray:
    """Normalized model inputs (B, C, H, W) back to [0, 1] pixels: (B, H, W) for greyscale, (B, H, W, C) otherwise.

    ``normalization`` is the attacked model's (``Reconstruction.normalization``); when omitted,
    :data:`~secure_ffm.models.vision.UNDECLARED_NORMALIZATION`.
    """
    x = (normalization or UNDECLARED_NORMALIZATION).denormalize(normalized.detach().cpu().float()).clamp(0.0, 1.0)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def _paired_index(sample: dict[str, Any], position: int) -> int:
    for key in ("truth_index", "original_index", "paired_with", "match"):
        if key in sample and sample[key] is not None:
            return int(sample[key])
    return position


def write_image_grid(
    truth: GroundTruth,
    reconstruction: Reconstruction,
    per_sample: Sequence[dict[str, Any]],
    path: Path,
    *,
    max_columns: int = 16,
    normalization: ImageNormalization | None = None,
) -> Path:
    """A PNG with each reconstruction under the original it was paired with, its PSNR beneath.

    Pixels are un-normalized with ``normalization``, by default the reconstruction's (the attacked model's).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normalization = normalization or reconstruction.normalization
    recon = to_pixels(reconstruction.inputs, normalization)
    originals = to_pixels(truth.inputs["pixels"], normalization)
    count = min(len(recon), max_columns)
    fig, axes = plt.subplots(2, count, figsize=(1.3 * count + 0.6, 3.0), squeeze=False)
    for i in range(count):
        sample = per_sample[i] if i < len(per_sample) else {}
        j = _paired_index(sample, i)
        axes[0, i].imshow(originals[min(j, len(originals) - 1)], cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(recon[i], cmap="gray", vmin=0, vmax=1)
        psnr = sample.get("psnr")
        axes[1, i].set_xlabel("-" if psnr is None else f"{psnr:.1f} dB", fontsize=8)
        for row in (0, 1):
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("reconstructed", fontsize=8)
    fig.suptitle("Gradient inversion: originals (top), reconstructions (bottom), PSNR", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # owner-only: the originals are the client's training examples
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), private=True)
    finally:
        plt.close(fig)
    return path


def write_text_table(
    truth: GroundTruth, reconstruction: Reconstruction, per_sample: Sequence[dict[str, Any]], path: Path, *, tokenizer: Any = None
) -> Path:
    """A Markdown table: original and recovered text side by side; recovered tokens that occur in the original in bold."""
    originals = truth.texts or []
    recovered = reconstruction.texts or []
    lines = [
        "# Reconstructions",
        "",
        "Tokens of the recovered text that occur in the original are **bold**.",
        "",
        "| # | original | recovered | token F1 | ROUGE-L |",
        "|---|---|---|---|---|",
    ]
    for i, text in enumerate(recovered):
        sample = per_sample[i] if i < len(per_sample) else {}
        j = _paired_index(sample, i)
        original = originals[j] if j < len(originals) else ""
        vocabulary = set(original.lower().split())
        marked = " ".join(f"**{_escape(w)}**" if w.lower() in vocabulary else _escape(w) for w in text.split())
        f1 = sample.get("token_f1")
        rouge_l = sample.get("rougeL", sample.get("rouge_l"))
        lines.append(
            f"| {i} | {_escape(original)} | {marked} | {'-' if f1 is None else f'{f1:.2f}'} "
            f"| {'-' if rouge_l is None else f'{rouge_l:.2f}'} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_text(path, "\n".join(lines) + "\n")  # owner-only: the originals are the client's training examples
    return path


MARKDOWN_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*_[]|#"})


def _escape(text: str) -> str:
    """A table cell's text as text: HTML's ``& < >`` as entities and Markdown's specials backslashed, on one line (the
    texts are clients' and an attack's: a recovered ``<script>`` must not become live HTML in a Markdown viewer)."""
    return html.escape(text.replace("\r", " ").replace("\n", " "), quote=False).translate(MARKDOWN_SPECIALS)
