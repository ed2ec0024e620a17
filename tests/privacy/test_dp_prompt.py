"""DP-SGD on prompt learning (``prompt``, ``prefix``, ``p-tuning``): Opacus' per-sample gradients of the prompt
parameters and the head equal a per-example loop, each example's gradient is clipped to C, and the ledger's epsilon is
the accountant's for the plan's q, sigma and steps."""

import json

import numpy as np
import pytest
import torch

from secure_ffm.config import ClientConfig, ModelConfig, PrivacyConfig, config_from_dict
from secure_ffm.data.base import LabeledData
from secure_ffm.models import build_model
from secure_ffm.privacy.accounting import GaussianSteps, compute_epsilon
from secure_ffm.privacy.dp_sgd import DPStep, plan_client
from secure_ffm.privacy.noise import FastStream
from secure_ffm.run.simulation import Simulation, prepare_run

MODES = {
    "prompt": {"prompt_tokens": 3, "prompt_init": "text", "prompt_init_text": "is this review good"},
    "prefix": {"prompt_tokens": 3},
    "prefix-mlp": {"prompt_tokens": 3, "prompt_encoder_hidden_size": 8},
    "p-tuning": {"prompt_tokens": 3, "prompt_encoder_hidden_size": 8},
}
TEXTS = ("a fine film", "dull and far too long, i left early", "great", "the plot makes no sense at all")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, one_torch_thread):
    """A 2-layer, 32-wide random BERT without dropout (so that a batch and a per-example loop see the same network)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from secure_ffm.models.text import resolve_name_or_path

    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    tokenizer = AutoTokenizer.from_pretrained(resolve_name_or_path("all-MiniLM-L6-v2"))
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    config = BertConfig(vocab_size=len(tokenizer), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **sizes)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build(encoder, mode):
    finetune = mode.split("-mlp")[0]
    config = ModelConfig(arch="hf-text", name_or_path=str(encoder), finetune=finetune, **MODES[mode])
    model = build_model(config, num_classes=2, data_kind="text", seed=0, max_length=16)
    encoded = model.encode(LabeledData(kind="text", inputs=TEXTS, labels=np.array([1, 0, 1, 0])))
    return model, encoded


def per_example_gradients(model, encoded):
    """``{name: (B, *shape)}``: each example's gradient, one forward and backward per example (unpadded)."""
    named = model.trainable_named_parameters()
    rows = {name: [] for name, _ in named}
    for i in range(len(encoded)):
        model.module.zero_grad(set_to_none=True)
        model.loss(model.make_batch(encoded, np.array([i]))).backward()
        for name, p in named:
            rows[name].append(p.grad.detach().clone())
    model.module.zero_grad(set_to_none=True)
    return {name: torch.stack(values) for name, values in rows.items()}


def dp_step(model, *, max_grad_norm, batch_size):
    optimizer = torch.optim.SGD([p for _, p in model.trainable_named_parameters()], lr=1.0)
    return DPStep(
        model,
        optimizer,
        mode="hooks",
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=batch_size,
        noise=FastStream(b"\0" * 16),
    )


@pytest.mark.parametrize("mode", sorted(MODES))
def test_opacus_per_sample_gradients_equal_a_per_example_loop(encoder, mode):
    model, encoded = build(encoder, mode)
    expected = per_example_gradients(model, encoded)
    step = dp_step(model, max_grad_norm=1.0, batch_size=len(encoded))
    batch = model.make_batch(encoded, np.arange(len(encoded)))  # padded to the longest example
    model.objective.loss(step.wrapped(**batch.inputs), batch.labels).backward()
    named = dict(model.trainable_named_parameters())
    assert any("prompt_encoder." in name for name in named)
    for name, p in named.items():
        assert p.grad_sample.shape == expected[name].shape, name
        torch.testing.assert_close(p.grad_sample, expected[name], atol=2e-6, rtol=1e-4, msg=name)
    assert all(float(g.abs().sum()) > 0 for name, g in expected.items() if "prompt_encoder." in name)
    step.close()


@pytest.mark.parametrize("mode", ["prompt", "prefix", "p-tuning"])
def test_each_example_is_clipped_to_the_norm_and_the_update_is_their_mean(encoder, mode):
    model, encoded = build(encoder, mode)
    expected = per_example_gradients(model, encoded)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in expected.values()))
    clip = float(norms.min()) / 2  # every example is clipped
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped_norms = norms * factors
    assert bool((clipped_norms <= clip * (1 + 1e-5)).all())
    before = {name: p.detach().clone() for name, p in model.trainable_named_parameters()}
    step = dp_step(model, max_grad_norm=clip, batch_size=len(encoded))
    step.step(model.make_batch(encoded, np.arange(len(encoded))))
    step.close()
    for name, p in model.trainable_named_parameters():
        mean_clipped = torch.einsum("b,b...->...", factors, expected[name]) / len(encoded)
        torch.testing.assert_close(before[name] - p.detach(), mean_clipped, atol=1e-6, rtol=1e-4, msg=name)


def test_the_ledger_epsilon_is_the_accountants_for_the_plan(encoder, tmp_path):
    privacy = {"mode": "dp-sgd", "target_epsilon": 8.0, "accountant": "rdp", "grad_sample_mode": "hooks"}
    raw = {
        "data": {"dataset": "movie_reviews", "max_train_examples": 60, "max_test_examples": 20, "num_clients": 2, "max_length": 16},
        "model": {"arch": "hf-text", "name_or_path": str(encoder), "finetune": "p-tuning", "prompt_tokens": 3},
        "client": {"local_steps": 2, "batch_size": 8, "lr": 0.05},
        "server": {"rounds": 2},
        "privacy": privacy,
    }
    config = config_from_dict(raw)
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    for client in ledger["clients"]:
        plan = plan_client(
            client["num_examples"],
            client=ClientConfig(local_steps=2, batch_size=8),
            privacy=PrivacyConfig(**privacy),
            planned_rounds=2,
        )
        assert client["noise_multiplier"] == plan.noise_multiplier and client["steps"] == 4
        expected = compute_epsilon([GaussianSteps(plan.noise_multiplier, plan.sample_rate, 4)], accountant="rdp", delta=plan.delta)
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert client["epsilon"] <= 8.0


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_virtual_step_in_chunks_equals_the_whole_step(encoder, mode):
    # privacy.max_physical_batch_size: the chunks of one padded batch pass the prompt hooks one by one
    after = {}
    for size in (0, 3):
        model, encoded = build(encoder, mode)
        step = dp_step(model, max_grad_norm=0.5, batch_size=len(encoded))
        step.max_physical_batch_size = size
        try:
            step.step(model.make_batch(encoded, np.arange(len(encoded))))
        finally:
            step.close()
        after[size] = {name: p.detach().clone() for name, p in model.trainable_named_parameters()}
    for name, value in after[0].items():
        torch.testing.assert_close(after[3][name], value, atol=1e-6, rtol=1e-5, msg=name)
