"""Virtual DP-SGD steps: a Poisson batch processed in physical chunks (privacy.max_physical_batch_size)."""

import json

import numpy as np
import pytest
import torch
from dp_step_runner import one_dp_step  # tests/privacy/dp_step_runner.py (on sys.path under pytest)
from safetensors.numpy import load_file

from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.dp_sgd import physical_chunks
from secure_ffm.privacy.noise import FastStream
from secure_ffm.run.simulation import Simulation, prepare_run


def cnn(privacy, **sections):
    raw = {
        "run": {"seed": 1},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 400, "max_test_examples": 100, "num_clients": 2, "alpha": 1.0},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 3, "batch_size": 23, "lr": 0.5},
        "server": {"rounds": 2},
        "privacy": {"mode": "dp-sgd", **privacy},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def prepared():
    return prepare_run(cnn({}))


def one_step(prepared, *, mode, max_physical_batch_size, size=23):
    """The parameters after one DP step (z = 1, C = 0.1, SGD lr 1) on ``size`` examples, and the loss it reports."""
    return one_dp_step(
        prepared,
        mode=mode,
        noise_multiplier=1.0,
        max_grad_norm=0.1,
        size=size,
        stream=FastStream(b"\1" * 16),
        max_physical_batch_size=max_physical_batch_size,
        generator=torch.Generator().manual_seed(0),
    )


def test_physical_chunks_split_a_batch_in_order_into_even_chunks_of_at_most_the_size(prepared):
    batch = prepared.model.make_batch(prepared.encoded_private, np.arange(23))
    chunks = physical_chunks(batch, 5)
    assert [len(c) for c in chunks] == [5, 5, 5, 4, 4]
    assert torch.equal(torch.cat([c.labels for c in chunks]), batch.labels)
    assert physical_chunks(batch, 0) == [batch] and physical_chunks(batch, 23) == [batch]


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_a_chunked_step_equals_the_unchunked_step_with_the_same_noise(prepared, mode):
    whole, whole_loss = one_step(prepared, mode=mode, max_physical_batch_size=0)
    chunked, chunked_loss = one_step(prepared, mode=mode, max_physical_batch_size=5)
    before = dict(prepared.model.trainable_named_parameters())
    # float32 sums in another order: differences of a few ulps of the update (noise std z*C/B = 0.0043 per coordinate)
    for name in whole:
        assert not torch.equal(whole[name], before[name].detach()), name  # the step moved every parameter
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-6)  # the batch mean, not the last chunk's


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_chunks_of_one_example_still_clip_each_example(prepared, mode):
    whole, _ = one_step(prepared, mode=mode, max_physical_batch_size=0, size=7)
    chunked, _ = one_step(prepared, mode=mode, max_physical_batch_size=1, size=7)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_no_pass_holds_more_examples_than_the_physical_size(prepared, mode, monkeypatch):
    # what bounds memory: every forward pass (hence its activations and per-sample gradients) sees at most 5 examples
    from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping

    seen = []
    wrapper = GradSampleModuleFastGradientClipping if mode == "ghost" else GradSampleModule
    forward = wrapper.forward

    def recording(self, *args, **kwargs):
        seen.append(len(next(iter(kwargs.values())) if kwargs else args[0]))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(wrapper, "forward", recording)
    one_step(prepared, mode=mode, max_physical_batch_size=5)
    assert seen == [5, 5, 5, 4, 4]


def test_no_bookkeeping_pass_holds_more_examples_than_the_physical_size(prepared, monkeypatch):
    seen = []
    cls = type(prepared.model.module)
    forward = cls.forward

    def recording(self, *args, **kwargs):
        seen.append(len(next(iter(kwargs.values())) if kwargs else args[0]))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", recording)
    one_step(prepared, mode="bookkeeping", max_physical_batch_size=5)
    assert seen == [5, 5, 5, 4, 4]


def test_bookkeeping_and_hooks_give_the_same_step(prepared):
    hooks, hooks_loss = one_step(prepared, mode="hooks", max_physical_batch_size=0)
    bookkeeping, bookkeeping_loss = one_step(prepared, mode="bookkeeping", max_physical_batch_size=0)
    for name in hooks:  # same clipping and the same noise values from the same stream
        torch.testing.assert_close(bookkeeping[name], hooks[name], rtol=1e-5, atol=1e-6, msg=name)
    assert bookkeeping_loss == pytest.approx(hooks_loss, rel=1e-6)


def test_negative_max_physical_batch_size_is_refused():
    with pytest.raises(ConfigError) as info:
        cnn({"max_physical_batch_size": -1})
    assert info.value.key == "privacy.max_physical_batch_size"


def test_a_run_with_virtual_steps_trains_and_keeps_the_unchunked_ledger(tmp_path):
    runs = {}
    for size in (0, 5):
        config = cnn({"max_physical_batch_size": size, "reproducible_noise": True, "grad_sample_mode": "hooks"})
        summary = Simulation(prepare_run(config), out_dir=tmp_path / str(size)).run()
        runs[size] = summary, json.loads((tmp_path / str(size) / "privacy.json").read_text())
    (whole, whole_ledger), (chunked, chunked_ledger) = runs[0], runs[5]
    assert chunked_ledger == whole_ledger
    assert 0 < chunked_ledger["epsilon"]["max"] <= 8.0
    # same sampling and noise streams: the models agree up to float summation order
    a, b = load_file(str(tmp_path / "0" / "model.safetensors")), load_file(str(tmp_path / "5" / "model.safetensors"))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert chunked["final"]["test_accuracy"] == pytest.approx(whole["final"]["test_accuracy"], abs=0.02)
