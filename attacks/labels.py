"""Label inference from the last layer's gradient, for attacks that are not given the labels.

With the mean cross-entropy over a batch of B examples, the gradient of the classifier's
bias is ``g_c = mean_i (p_ic - y_ic)`` (``p`` the softmax output, ``y`` one-hot labels), and the
gradient of its weight row c is ``mean_i (p_ic - y_ic) h_i`` (``h_i`` the layer's input).

* Batch size 1, iDLG (Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients",
  arXiv 2001.02610, 2020): only the true class has ``p - y < 0``, so the label is the class
  with the negative bias entry (or, without a bias, the negative weight-row sum, which holds
  when ``h >= 0`` as after a ReLU). This is exact.
* Larger batches, label counts in the manner of LLG (Wainakh et al., "User-Level Label Leakage
  from Gradients in Federated Learning", PoPETs 2022): every class with a negative entry is
  present; the remaining slots go greedily to the classes with the largest estimated count.
  From the bias, ``n_c = B (pbar_c - g_c)`` where ``pbar_c = mean_i p_ic``; like LLG+, the
  offset ``pbar`` is estimated by running the model on dummy inputs (:func:`dummy_images`). This
  is accurate while the model's output hardly depends on its input (early training, when attacks
  are strongest), and degrades for a trained model. Its accuracy is measured, not quoted here
  (figures go stale): ``benchmarks/attack_images.py`` reports the label-count accuracy per model
  and batch size (the README's gradient-inversion benchmark), and
  ``tests/attacks/test_image_labels.py`` checks it on real Fashion-MNIST test batches.

A local update or an aggregate holds ``delta = -lr * sum_t g_t``, the opposite sign: it is
turned back into the mean gradient it approximates, ``-delta / (lr * local_steps)``. That treats
every example as used equally often; when the local steps cover the batch unevenly (5 steps of
half the batch use one half 3 times, the other twice) the counts are biased, and a model that
learns fast during the steps (such as the ViT at a large learning rate) moves its predictions
away from the offset, so the counts from an update are less accurate than from a gradient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attacks.base import Observation
from attacks.priors import normalization_of, pixel_box
from secure_ffm.data.normalization import ImageNormalization

DUMMY_EXAMPLES = 64
"""Dummy inputs behind the offset estimate."""


def _head_names(observation: Observation) -> tuple[str | None, str | None]:
    """Names of the classifier's (weight, bias) among the observed arrays."""
    classes = observation.model.num_classes
    shapes = {n: observation.observed[n].shape for n in reversed(list(observation.observed))}  # last layers first
    weight = next((n for n in shapes if n.endswith("head.weight")), None)
    bias = next((n for n in shapes if n.endswith("head.bias")), None)
    if weight is None:
        weight = next((n for n, shape in shapes.items() if len(shape) == 2 and shape[0] == classes), None)
    if bias is None:
        bias = next((n for n, shape in shapes.items() if shape == (classes,)), None)
    return weight, bias


def _as_gradient(observation: Observation, value: np.ndarray) -> tuple[np.ndarray, bool]:
    """The mean gradient an observed array stands for, and whether its scale is known."""
    value = np.asarray(value, dtype=np.float64)
    if observation.threat_model.observes == "gradient":
        return value, True
    if not observation.threat_model.knows_training:
        return -value, False
    setup = observation.setup
    return -value / (setup.learning_rate * setup.local_steps), True


def dummy_images(
    shape: tuple[int, ...], count: int, generator: torch.Generator, *, normalization: ImageNormalization | None = None
) -> torch.Tensor:
    """Smooth random images in the valid pixel box: Gaussian noise at a quarter of the resolution, upsampled.

    Their mean prediction is much closer to the model's mean prediction on real images than that of
    pixel-wise noise (on the ViT at initialization), which is what the offset estimate needs.
    ``normalization`` is the attacked model's (its pixel box).
    """
    low, high = pixel_box(normalization)
    channels, height, width = shape
    coarse = torch.randn((count, channels, max(1, height // 4), max(1, width // 4)), generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False).clamp(low, high)


def mean_prediction(observation: Observation, dummy: torch.Tensor) -> np.ndarray:
    """The model's mean softmax output over ``dummy`` inputs (LLG+'s offset estimate from dummy data)."""
    module = observation.model.module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            probs = module(dummy).softmax(dim=-1)
    finally:
        module.train(was_training)
    return probs.mean(dim=0).double().numpy()


def _allocate(estimate: np.ndarray, present: np.ndarray, batch_size: int, *, divisor: bool) -> np.ndarray:
    """Integer counts summing to ``batch_size``: one for each present class (most certain first), then greedy."""
    counts = np.zeros(len(estimate), dtype=np.int64)
    for c in present[:batch_size]:
        counts[c] = 1
    for _ in range(batch_size - int(counts.sum())):
        score = estimate / (counts + 1) if divisor else estimate - counts
        counts[int(np.argmax(score))] += 1
    return counts


def infer_labels(observation: Observation, *, generator: torch.Generator | None = None, batch_size: int | None = None) -> torch.Tensor:
    """The labels of the observed batch, sorted by class: ``(batch_size,)`` int64.

    Batch size 1 uses iDLG (exact); larger batches the LLG-style count estimate described in the
    module docstring. ``batch_size`` defaults to the observation's (pass the attacker's guess when
    the threat model hides it). ``generator`` draws the dummy inputs of the offset estimate (a fixed seed
    when None). For an aggregate the result describes the mixture of all clients' labels.
    """
    weight_name, bias_name = _head_names(observation)
    if weight_name is None and bias_name is None:
        raise ValueError("label inference needs the classifier's gradient, but no observed array has one row per class")
    batch_size = batch_size or observation.batch_size
    if bias_name is not None:
        g, scale_known = _as_gradient(observation, observation.observed[bias_name])
        bias = True
    else:
        assert weight_name is not None
        g, scale_known = _as_gradient(observation, observation.observed[weight_name].sum(axis=1))
        bias = False
    if batch_size == 1:
        return torch.tensor([int(np.argmin(g))], dtype=torch.long)
    present = np.argsort(g)[: int((g < 0).sum())]  # most negative first
    if bias and scale_known:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        dummy = dummy_images(tuple(observation.input_shape), DUMMY_EXAMPLES, gen, normalization=normalization_of(observation.model))
        offset = mean_prediction(observation, dummy)
        counts = _allocate(batch_size * (offset - g), present, batch_size, divisor=False)
    else:  # unknown scale (or weight rows of unknown impact): shares proportional to -g (LLG's simple variant)
        counts = _allocate(np.clip(-g, 0.0, None) + 1e-12, present, batch_size, divisor=True)
    return torch.repeat_interleave(torch.arange(len(counts)), torch.from_numpy(counts))
