"""Book-keeping clipping (one backward pass) against a direct loop over examples."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.models import build_model
from secure_ffm.privacy.bookkeeping import BookkeepingClipper, bookkeeping_supported, unsupported_layer
from secure_ffm.privacy.dp_sgd import auto_grad_sample_mode


class Net(nn.Module):
    """conv -> ReLU -> conv -> per-position Linear (3-D input) -> pool -> Linear -> Linear, ``inplace`` ReLUs optional;
    ``channels_last``: from conv1's output on in the channels-last layout, as the project's CNNs (the later convolutions'
    inputs and output gradients are channels-last)."""

    def __init__(self, *, stride, padding, dilation, bias, inplace=False, twice=False, channels_last=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
        self.conv2 = nn.Conv2d(3, 5, 2, padding=padding, bias=bias)  # 3 input channels: strided patches
        self.conv3 = nn.Conv2d(5, 4, 3, padding=1, stride=stride, bias=bias)  # 5 >= GROUPED_CONV_MIN_CHANNELS: grouped
        self.token = nn.Linear(4, 6, bias=bias)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3, bias=bias)
        self.relu = nn.ReLU(inplace=inplace)
        self.twice = twice
        self.channels_last = channels_last

    def forward(self, x):
        x = self.conv1(x)
        x = self.relu(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)
        x = self.relu(self.conv3(self.relu(self.conv2(x))))
        x = self.relu(self.token(x.flatten(2).transpose(1, 2))).mean(1)  # (B, positions, 4) -> (B, 6)
        x = self.relu(self.fc(x))
        if self.twice:  # one layer used twice: its calls' gradients add up before the norm
            x = self.relu(self.fc(x))
        return self.head(x)


def loop_clipped_sum(model, x, y, max_grad_norm):
    """Σ_i min(1, C / (|∇ loss_i| + 1e-6)) ∇ loss_i, one backward per example."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        factor = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return params, total


def bookkeeping_clipped_sum(model, x, y, max_grad_norm):
    params = [p for p in model.parameters() if p.requires_grad]
    clipper = BookkeepingClipper(model, params, max_grad_norm=max_grad_norm)
    try:
        clipper.clip_and_accumulate(F.cross_entropy(model(x), y, reduction="none"))
        return [clipper.clipped_sum(p).clone() for p in params]
    finally:
        clipper.close()


def assert_matches_loop(model, x, y, max_grad_norm):
    params, expected = loop_clipped_sum(model, x, y, max_grad_norm)
    got = bookkeeping_clipped_sum(model, x, y, max_grad_norm)
    for p, e, g in zip(params, expected, got, strict=True):
        assert g.shape == p.shape
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


@settings(max_examples=25, deadline=None)
@given(
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    batch=st.integers(1, 6),
    max_grad_norm=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
    channels_last=st.booleans(),
)
def test_clipped_sum_equals_a_loop_over_examples(stride, padding, dilation, bias, batch, max_grad_norm, seed, channels_last):
    torch.manual_seed(seed)
    model = Net(stride=stride, padding=padding, dilation=dilation, bias=bias, channels_last=channels_last).double()
    x, y = torch.randn(batch, 1, 11, 11, dtype=torch.float64), torch.randint(0, 3, (batch,))
    assert_matches_loop(model, x, y, max_grad_norm)


def test_every_example_is_clipped_to_the_norm():
    torch.manual_seed(0)
    model = Net(stride=1, padding=1, dilation=1, bias=True).double()
    x, y = torch.randn(8, 1, 9, 9, dtype=torch.float64) * 50, torch.randint(0, 3, (8,))
    for i in range(len(x)):  # each example alone: its clipped gradient's norm is C · norm / (norm + 1e-6) <= C
        total = bookkeeping_clipped_sum(model, x[i : i + 1], y[i : i + 1], 0.01)
        assert 0.01 * (1 - 1e-4) < float(torch.sqrt(sum(t.square().sum() for t in total))) <= 0.01


def test_a_layer_called_twice_is_clipped_on_the_sum_of_its_calls():
    torch.manual_seed(1)
    model = Net(stride=1, padding=1, dilation=1, bias=True, twice=True).double()
    assert_matches_loop(model, torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,)), 0.05)


def test_in_place_ops_after_a_layer_do_not_change_its_output_gradient():
    torch.manual_seed(2)
    model = Net(stride=1, padding=1, dilation=1, bias=True, inplace=True).double()
    assert_matches_loop(model, torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,)), 0.05)


def test_frozen_layers_are_skipped_and_only_trained_parameters_are_summed():
    torch.manual_seed(3)
    model = Net(stride=1, padding=1, dilation=1, bias=True).double()
    for p in (*model.conv1.parameters(), model.token.bias):
        p.requires_grad_(False)
    assert_matches_loop(model, torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,)), 0.05)


@pytest.mark.parametrize(
    "layer",
    [nn.LayerNorm(4), nn.Embedding(3, 4), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(1, 4, 3, padding="same"), nn.Conv1d(1, 2, 3)],
    ids=["layernorm", "embedding", "grouped-conv", "same-padding", "conv1d"],
)
def test_a_trained_layer_without_a_rule_is_refused(layer):
    model = nn.Sequential(nn.Linear(4, 4), layer)
    assert unsupported_layer(model) == "1" and not bookkeeping_supported(model)
    with pytest.raises(ValueError, match="no rule for layer 1"):
        BookkeepingClipper(model, list(model.parameters()), max_grad_norm=1.0)


def test_a_frozen_layer_without_a_rule_is_allowed():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4).requires_grad_(False))
    assert bookkeeping_supported(model)


def test_tied_weights_are_not_supported():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    assert not bookkeeping_supported(nn.Sequential(first, second))


def test_close_removes_the_hooks():
    model = Net(stride=1, padding=1, dilation=1, bias=True)
    clipper = BookkeepingClipper(model, list(model.parameters()), max_grad_norm=1.0)
    clipper.close()
    model(torch.randn(2, 1, 8, 8))
    assert clipper.records == [] and all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(("arch", "finetune", "mode"), [("cnn", "full", "bookkeeping"), ("cnn", "head", "hooks"), ("vit", "full", "ghost")])
def test_auto_picks_bookkeeping_where_every_trained_layer_has_a_rule(arch, finetune, mode):
    model = build_model(ModelConfig(arch=arch, finetune=finetune), num_classes=10, data_kind="image", seed=0)
    assert auto_grad_sample_mode(model) == mode


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_matches_the_loop_to_float_precision(channels_last):
    torch.manual_seed(4)
    model = Net(stride=1, padding=1, dilation=1, bias=True, channels_last=channels_last)
    x, y = torch.randn(6, 1, 10, 10), torch.randint(0, 3, (6,))
    params, expected = loop_clipped_sum(model, x, y, 0.1)
    for e, g in zip(expected, bookkeeping_clipped_sum(model, x, y, 0.1), strict=True):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-6)
