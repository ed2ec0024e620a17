"""Image reconstruction metrics: pure functions on pixel tensors in [0, 1].

Reconstructions and ground truth live in the model's normalized pixel space
(``(x / 255 - mean) / std`` with the dataset's :class:`~secure_ffm.data.normalization.ImageNormalization`,
which the model carries and the image attacks record in ``Reconstruction.normalization``);
:func:`to_pixels` maps them back to [0, 1] before scoring.
PSNR and SSIM follow the definitions breaching (Geiping et al.) reports: PSNR with a data
range of 1, and SSIM of Wang et al. (IEEE TIP 2004) with an 11x11 Gaussian window
(sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, computed over the valid part of each image.

A reconstruction is scored against the original it resembles most: reconstructions and
originals are paired by an optimal assignment (:func:`pair_images`), since an attack
recovers a batch as a set, in no particular order. Under secure aggregation the ground
truth holds every client's examples, so there may be more originals than reconstructions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.models.vision import UNDECLARED_NORMALIZATION

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PSNR_CAP = 100.0
"""Stands in for the infinite PSNR of identical images when pairing (a finite cost)."""

ArrayLike = torch.Tensor | np.ndarray


def _tensor(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x
    return t.detach().to(torch.float64)


def _images(x: ArrayLike) -> torch.Tensor:
    """As a float64 ``(N, C, H, W)`` tensor: a single ``(H, W)`` or ``(C, H, W)`` image gets the missing axes."""
    t = _tensor(x)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(t.shape)}")
    return t


def to_pixels(normalized: ArrayLike, *, normalization: ImageNormalization | None = None) -> torch.Tensor:
    """Undo the model's normalization (``x * std + mean`` per channel) and clip to the valid range [0, 1] (float64).

    ``normalization`` is the attacked model's (``Reconstruction.normalization``); when omitted,
    :data:`~secure_ffm.models.vision.UNDECLARED_NORMALIZATION`.
    """
    return (normalization or UNDECLARED_NORMALIZATION).denormalize(_tensor(normalized)).clamp(0.0, 1.0)


def mse(a: ArrayLike, b: ArrayLike) -> torch.Tensor:
    """Mean squared error of each image pair: shape ``(N,)``."""
    x, y = _images(a), _images(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} and {tuple(y.shape)}")
    return ((x - y) ** 2).flatten(1).mean(dim=1)


def psnr(a: ArrayLike, b: ArrayLike, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair, ``10 log10(range^2 / MSE)`` (inf when equal)."""
    error = mse(a, b)
    return 10.0 * torch.log10(data_range**2 / error)  # 1/0 -> inf


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    a: ArrayLike,
    b: ArrayLike,
    *,
    data_range: float = 1.0,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) of each image pair: shape ``(N,)``, 1 for identical images.

    Local means, variances and covariance are Gaussian-weighted over ``window x window``
    patches (valid positions only); the SSIM map is averaged over positions and channels.
    """
    x, y = _images(a), _images(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} and {tuple(y.shape)}")
    channels = x.shape[1]
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the {window}x{window} SSIM window")
    kernel = _gaussian_window(window, sigma).expand(channels, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)


def label_accuracy(predicted: ArrayLike, true: ArrayLike) -> float:
    """Share of positions where the labels agree (use after pairing)."""
    p, t = np.asarray(predicted).ravel(), np.asarray(true).ravel()
    if p.shape != t.shape:
        raise ValueError(f"label counts differ: {p.size} and {t.size}")
    return float((p == t).mean()) if p.size else float("nan")


def label_count_accuracy(predicted: ArrayLike, true: ArrayLike) -> float:
    """Order-free label accuracy: the share of ``true``'s labels matched by a label in ``predicted``.

    ``sum_c min(n_pred[c], n_true[c]) / len(true)``: 1 exactly when the label multisets agree.
    """
    p, t = np.asarray(predicted, dtype=np.int64).ravel(), np.asarray(true, dtype=np.int64).ravel()
    if not t.size:
        return float("nan")
    size = int(max(p.max(initial=0), t.max(initial=0))) + 1
    matched = np.minimum(np.bincount(p, minlength=size), np.bincount(t, minlength=size)).sum()
    return float(matched / t.size)


def pair_images(reconstructed: ArrayLike, originals: ArrayLike, *, by: str = "psnr") -> np.ndarray:
    """Index into ``originals`` of the original each reconstruction is paired with (distinct originals).

    An optimal assignment (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``) that
    maximizes the total PSNR (``by="psnr"``, infinite values capped at :data:`PSNR_CAP`) or
    minimizes the total MSE (``by="mse"``). There may be more originals than reconstructions.
    """
    x, y = _images(reconstructed), _images(originals)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    if len(x) > len(y):
        raise ValueError(f"{len(x)} reconstructions but only {len(y)} originals to pair them with")
    errors = ((x[:, None] - y[None, :]) ** 2).flatten(2).mean(dim=2).numpy()  # (R, N)
    if by == "mse":
        cost = errors
    elif by == "psnr":
        with np.errstate(divide="ignore"):
            cost = -np.minimum(10.0 * np.log10(1.0 / errors), PSNR_CAP)
    else:
        raise ValueError(f"by must be 'psnr' or 'mse', not {by!r}")
    cost = np.nan_to_num(cost, nan=np.inf, posinf=np.inf)
    cost[~np.isfinite(cost)] = np.nanmax(np.where(np.isfinite(cost), np.abs(cost), 0.0)) * 2 + 1.0  # e.g. a diverged reconstruction
    rows, cols = linear_sum_assignment(cost)
    pairing = np.empty(len(x), dtype=np.int64)
    pairing[rows] = cols
    return pairing


def score_images(reconstruction: Any, truth: Any, *, by: str = "psnr", normalization: ImageNormalization | None = None) -> dict[str, Any]:
    """PSNR, SSIM and MSE of each reconstruction against its paired original, their means and medians.

    ``reconstruction`` is an :class:`attacks.base.Reconstruction` (normalized ``inputs``, optional
    ``labels``) and ``truth`` an :class:`attacks.base.GroundTruth` with ``inputs["pixels"]``.
    Returns ``{"mean": {...}, "median": {...}, "per_sample": [...], "pairing": [...]}``; each
    per-sample entry names its original (``truth_index``). PSNR is capped at :data:`PSNR_CAP`
    (identical images) so that means stay finite. With labels, ``label_accuracy`` compares each
    reconstruction's label with its paired original's, and the order-free ``label_count_accuracy``
    the label multiset with the target client's labels (the first ``len(reconstruction)`` of the
    ground truth; :func:`attacks.case.observe` puts the target first). Pixels are un-normalized
    with ``normalization``, by default the reconstruction's (the attacked model's).
    """
    normalization = normalization or getattr(reconstruction, "normalization", None)
    rec = to_pixels(reconstruction.inputs, normalization=normalization)
    orig = to_pixels(truth.inputs["pixels"], normalization=normalization)
    pairing = pair_images(rec, orig, by=by)
    paired = orig[torch.from_numpy(pairing)]
    values = {
        "psnr": psnr(rec, paired).clamp(max=PSNR_CAP).tolist(),
        "ssim": ssim(rec, paired).tolist(),
        "mse": mse(rec, paired).tolist(),
    }
    true_labels = np.asarray(truth.labels)
    per_sample: list[dict[str, Any]] = []
    for i, j in enumerate(pairing.tolist()):
        sample: dict[str, Any] = {"index": i, "truth_index": j, **{m: v[i] for m, v in values.items()}, "true_label": int(true_labels[j])}
        if reconstruction.labels is not None:
            sample["label"] = int(np.asarray(reconstruction.labels)[i])
        per_sample.append(sample)
    mean = {m: float(np.mean(v)) for m, v in values.items()}
    median = {m: float(np.median(v)) for m, v in values.items()}
    if reconstruction.labels is not None:
        predicted = np.asarray(reconstruction.labels)
        mean["label_accuracy"] = label_accuracy(predicted, true_labels[pairing])
        mean["label_count_accuracy"] = label_count_accuracy(predicted, true_labels[: len(predicted)])
    return {"mean": mean, "median": median, "per_sample": per_sample, "pairing": pairing.tolist()}
