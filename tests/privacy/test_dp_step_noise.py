"""The noise of a DP-SGD step is the stream's float32 draw for the trained parameters, in order, times z C / B."""

import numpy as np
import pytest
import torch
from dp_step_runner import one_dp_step  # tests/privacy/dp_step_runner.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.models.base import Batch
from secure_ffm.privacy.dp_sgd import noise_like
from secure_ffm.privacy.noise import FastStream, SecureStream
from secure_ffm.run.simulation import prepare_run

KEY = bytes(range(32))
SIZE, Z, C = 12, 1.3, 0.2


@pytest.fixture(scope="module")
def prepared():
    raw = {
        "run": {"seed": 3},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 2},
        "model": {"arch": "cnn", "finetune": "full"},
        "privacy": {"mode": "dp-sgd"},
    }
    return prepare_run(config_from_dict(raw))


def stepped(prepared, *, mode, noise_multiplier, stream, noise_only=False):
    """The trained parameters after one SGD (lr 1) DP step on the first SIZE examples."""
    params, _ = one_dp_step(
        prepared, mode=mode, noise_multiplier=noise_multiplier, max_grad_norm=C, size=SIZE, stream=stream, noise_only=noise_only
    )
    return params


@pytest.mark.parametrize(
    ("mode", "stream_type"),
    [("hooks", FastStream), ("ghost", FastStream), ("bookkeeping", FastStream), ("bookkeeping", SecureStream)],
)
def test_a_step_adds_the_streams_draw_times_z_c_over_the_batch(prepared, mode, stream_type):
    noisy = stepped(prepared, mode=mode, noise_multiplier=Z, stream=stream_type(KEY))
    clean = stepped(prepared, mode=mode, noise_multiplier=0.0, stream=stream_type(bytes(32)))
    shapes = [p for _, p in prepared.model.trainable_named_parameters()]
    expected = noise_like(stream_type(KEY), shapes, Z * C)
    for (name, before), noise in zip(prepared.model.trainable_named_parameters(), expected, strict=True):
        assert noise.dtype == before.dtype and noise.shape == before.shape
        # SGD at lr 1: after - before = -(clipped sum + noise) / B, so the two runs differ by -noise / B
        torch.testing.assert_close(noisy[name] - clean[name], -noise / SIZE, rtol=0, atol=1e-6, msg=name)


def test_an_empty_batch_step_is_noise_only(prepared):
    after = stepped(prepared, mode="bookkeeping", noise_multiplier=Z, stream=SecureStream(KEY), noise_only=True)
    before = [p for _, p in prepared.model.trainable_named_parameters()]
    expected = noise_like(SecureStream(KEY), before, Z * C / SIZE)
    for (name, p), noise in zip(prepared.model.trainable_named_parameters(), expected, strict=True):
        torch.testing.assert_close(after[name] - p.detach(), -noise, rtol=0, atol=1e-7, msg=name)


def test_noise_like_splits_one_float32_draw_in_order_and_keeps_other_dtypes():
    tensors = [torch.zeros(3, 4), torch.zeros(5, dtype=torch.float64), torch.zeros(2)]
    parts = noise_like(FastStream(KEY), tensors, 2.0)
    shared = FastStream(KEY).normal_float32(14, 2.0)
    assert torch.equal(parts[0], shared[:12].view(3, 4)) and torch.equal(parts[2], shared[12:])
    assert parts[1].dtype == torch.float64 and parts[1].shape == (5,)


def test_the_three_modes_clip_the_channels_last_cnn_alike(prepared):
    # the cnn runs channels-last from conv1's output on; Opacus' conv per-sample gradients assume NCHW inputs, so the
    # hooks and ghost modes hand its convolutions NCHW copies (dp_sgd.nchw_convolution_inputs); book-keeping reads any
    steps = {mode: stepped(prepared, mode=mode, noise_multiplier=0.0, stream=FastStream(KEY)) for mode in ("hooks", "ghost", "bookkeeping")}
    for name, _ in prepared.model.trainable_named_parameters():
        for mode in ("hooks", "ghost"):
            torch.testing.assert_close(steps[mode][name], steps["bookkeeping"][name], rtol=1e-5, atol=1e-7, msg=f"{mode} {name}")
    assert all(not layer._forward_pre_hooks for layer in prepared.model.module.modules())  # close() removed them


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks", "ghost"])
def test_an_example_whose_gradient_is_not_finite_contributes_nothing(prepared, mode):
    """A crafted model can overflow on one example only (an audit made it NaN for one example's pixel block above a
    threshold): its NaN turned the whole update into NaN, or made the client decline, readable beside the noise. The
    step with such an example (here its pixels are NaN) equals the step without it, finite."""
    model = prepared.model
    full = model.make_batch(prepared.encoded_private, np.arange(SIZE))
    poisoned = Batch({k: v.clone() for k, v in full.inputs.items()}, full.labels.clone())
    poisoned.inputs["pixels"][0] = float("nan")
    rest = Batch({k: v[1:] for k, v in full.inputs.items()}, full.labels[1:])
    steps = {}
    for name, batch in (("poisoned", poisoned), ("rest", rest)):
        steps[name], _ = one_dp_step(
            prepared, mode=mode, noise_multiplier=Z, max_grad_norm=C, size=SIZE, stream=FastStream(KEY), batch=batch
        )
    for name, value in steps["poisoned"].items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, steps["rest"][name], rtol=0, atol=1e-6, msg=name)


def test_ghost_clippings_recompute_keeps_the_dropout_masks_its_clip_factors_came_from(tmp_path):
    """Ghost clipping recomputes a chunk whose sum is not finite; with dropout (BERT's 0.1) a recompute over fewer
    examples drew other masks, and a kept example's contribution reached 1.12 C (2.3 C with dropout 0.5)."""
    import copy
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from tiny_encoder import save_tiny_bert, tiny_text_sections

    from secure_ffm.privacy.dp_sgd import DPStep, auto_grad_sample_mode

    text = prepare_run(
        config_from_dict(tiny_text_sections(save_tiny_bert(tmp_path / "bert"), model={"finetune": "full"}, privacy={"mode": "dp-sgd"}))
    )
    assert auto_grad_sample_mode(text.model) == "ghost"
    batch = text.model.make_batch(text.encoded_private, np.arange(2))
    target = batch.inputs["input_ids"][0].clone()

    def poison(module, args, out):  # a crafted model: the first example's embeddings overflow
        out = out.clone()
        out[(args[0] == target).all(1)] = float("nan")
        return out

    ratios = []
    for seed in range(8):
        torch.manual_seed(seed)
        model = copy.deepcopy(text.model)
        model.module.train()
        next(m for n, m in model.module.named_modules() if n.endswith("word_embeddings")).register_forward_hook(poison)
        params = [p for _, p in model.trainable_named_parameters()]
        step = DPStep(
            model,
            torch.optim.SGD(params, lr=1.0),
            mode="ghost",
            noise_multiplier=0.0,
            max_grad_norm=0.01,
            expected_batch_size=2,
            noise=FastStream(KEY),
        )
        step._backward(batch)
        ratios.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))) / 0.01)
        step.close()
    assert max(ratios) <= 1.0 + 1e-4 and min(ratios) > 0.99, ratios  # the kept example's clipped gradient: norm C exactly
