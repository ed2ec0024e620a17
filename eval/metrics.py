"""Metrics for privacy-utility evaluation: the attacks' reconstruction metrics and a Pareto front.

The reconstruction metrics live with the attacks (``attacks.metrics_image``: PSNR, SSIM, MSE,
label accuracy; ``attacks.metrics_text``: token precision/recall/F1, ROUGE-1/2/L, exact match)
and are re-exported here, so that evaluation code has one place to import them from. When the
``attacks`` package is missing they are simply absent; :func:`pareto_front` never needs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

IMAGE_METRICS = ("mse", "psnr", "ssim", "label_accuracy", "label_count_accuracy", "pair_images", "score_images", "to_pixels")
TEXT_METRICS = (
    "words",
    "token_prf",
    "ngrams",
    "rouge_n",
    "rouge_l",
    "lcs_length",
    "exact_match",
    "score_pair",
    "score_token_ids",
    "score_texts",
    "bag_of_tokens_scores",
)

try:
    from attacks.metrics_image import label_accuracy, label_count_accuracy, mse, pair_images, psnr, score_images, ssim, to_pixels
except ImportError:  # pragma: no cover - attacks not installed
    IMAGE_METRICS = ()
try:
    from attacks.metrics_text import (
        bag_of_tokens_scores,
        exact_match,
        lcs_length,
        ngrams,
        rouge_l,
        rouge_n,
        score_pair,
        score_texts,
        score_token_ids,
        token_prf,
        words,
    )
except ImportError:  # pragma: no cover - attacks not installed
    TEXT_METRICS = ()


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], *, maximize: Sequence[bool] = (False, True)) -> list[int]:
    """Indices of the points no other point dominates, sorted by the first objective (then the second).

    By default the first objective is minimized and the second maximized: ``(attack success,
    utility)`` pairs, where the front holds the settings that no other setting beats on both
    privacy and utility. Points with a NaN or None coordinate are never on the front; equal
    points are all on it.

    >>> pareto_front([(30.0, 0.8), (12.0, 0.7), (25.0, 0.6), (12.0, 0.5)])
    [1, 0]
    """
    valid = [i for i, p in enumerate(points) if all(v is not None and not math.isnan(float(v)) for v in p)]
    if any(len(points[i]) != len(maximize) for i in valid):
        raise ValueError(f"every point needs {len(maximize)} coordinates")
    front = [i for i in valid if not any(dominates(points[j], points[i], maximize) for j in valid if j != i)]
    return sorted(front, key=lambda i: tuple(float(v) for v in points[i]))


__all__ = ["IMAGE_METRICS", "TEXT_METRICS", "dominates", "pareto_front", *IMAGE_METRICS, *TEXT_METRICS]
