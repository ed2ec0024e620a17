"""Linear probing, then fine-tuning (``model.linear_probe_rounds``): head-only rounds under every mechanism that allows them."""

import json
import math

import numpy as np
import pytest
import torch
from interrupt import InterruptAtRound  # tests/interrupt.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.engine.client import TRAIN_ONLY, FederatedClient, held_fixed
from secure_ffm.engine.wire import FitInstructions
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import Simulation, prepare_run

MODES = {
    "no-dp": ({"mode": "none"}, "none"),
    "dp-sgd": ({"mode": "dp-sgd", "grad_sample_mode": "hooks"}, "none"),
    "distributed-dp-sgd-masking": ({"mode": "distributed-dp-sgd", "max_grad_norm": 1.0}, "masking"),
}


def tiny(privacy, protocol, **sections):
    raw = {
        "run": {"seed": 5, "name": "tiny-lp-ft"},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 240, "max_test_examples": 60, "num_clients": 3, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full", "linear_probe_rounds": 1},
        "client": {"batch_size": 20, "lr": 0.5, "local_steps": 2},
        "server": {"rounds": 2},
        "privacy": {"target_epsilon": 8.0, **privacy},
        "secure_aggregation": {"protocol": protocol},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def head(name):
    return name.startswith("head.")


@pytest.mark.parametrize("mode", list(MODES))
def test_the_first_rounds_move_the_head_and_nothing_else_then_everything_moves(mode):
    privacy, protocol = MODES[mode]
    simulation = Simulation(prepare_run(tiny(privacy, protocol)))
    initial = {k: v.copy() for k, v in simulation.server.parameters.items()}
    simulation.history.append(simulation.run_unit(1))
    after_probe = {k: v.copy() for k, v in simulation.server.parameters.items()}
    simulation.history.append(simulation.run_unit(2))
    after_tuning = simulation.server.parameters
    assert {k for k in initial if head(k)} == {"head.weight", "head.bias"}
    for name in initial:
        if head(name):
            assert not np.array_equal(after_probe[name], initial[name]), name
        else:  # bitwise: a zero update, no noise, no rounding
            assert np.array_equal(after_probe[name], initial[name]), name
            assert not np.array_equal(after_tuning[name], after_probe[name]), name


def test_a_head_only_round_of_distributed_dp_sgd_sends_zeros_and_noises_only_the_head():
    prepared = prepare_run(tiny(*MODES["distributed-dp-sgd-masking"]))
    mechanism = prepared.privacy
    client = FederatedClient(
        client_id=0,
        model=prepared.model,
        encoded=prepared.encoded_private,
        indices=prepared.data.client_indices[0],
        trainer=mechanism.trainer(None),
        protocol=None,
    )
    update = client.train(FitInstructions(round=1, parameters=prepared.initial_parameters, config={TRAIN_ONLY: "head"})).delta
    assert set(update) == set(prepared.initial_parameters)
    for name, value in update.items():
        if not head(name):
            assert not np.any(value), name
    noised = np.concatenate([update["head.weight"].reshape(-1), update["head.bias"].reshape(-1)])
    # the head's coordinates: the rounded clipped sum (norm at most C = 1 per example, 80 examples at most) plus one
    # discrete share of the geometry of the whole update (the one the server decodes)
    geometry = mechanism.discrete
    assert geometry.dim == sum(v.size for v in prepared.initial_parameters.values())
    share_std_units = geometry.share_sigma
    assert np.std(noised) == pytest.approx(share_std_units, rel=0.15)
    assert np.all(noised == np.round(noised))
    assert all(p.requires_grad for _, p in prepared.model.module.named_parameters())  # restored after the round


def test_head_only_rounds_spend_the_budget_of_any_round(tmp_path):
    cfg = tiny(*MODES["distributed-dp-sgd-masking"], server={"rounds": 3}, model={"linear_probe_rounds": 2})
    Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert all(client["rounds"] == 3 and client["steps"] == 3 for client in ledger["clients"])
    assert ledger["epsilon"]["max"] <= 8.0 * 1.0001


def test_the_fit_config_holds_fixed_every_trainable_parameter_but_the_heads():
    prepared = prepare_run(tiny(*MODES["no-dp"]))
    model = prepared.model
    fixed = held_fixed(model, {TRAIN_ONLY: "head"})
    assert set(fixed) == set(model.trainable_names()) - {"head.weight", "head.bias"}
    assert held_fixed(model, {}) == ()
    with pytest.raises(ValueError, match="train_only"):
        held_fixed(model, {TRAIN_ONLY: "encoder"})
    with model.holding_fixed(fixed):
        assert model.trainable_names() == ("head.weight", "head.bias")
    assert len(model.trainable_names()) == len(fixed) + 2


@pytest.mark.parametrize(
    ("model", "server", "privacy", "key"),
    [
        ({"finetune": "head", "linear_probe_rounds": 1}, {"rounds": 3}, {}, "model.linear_probe_rounds"),
        ({"finetune": "full", "linear_probe_rounds": 3}, {"rounds": 3}, {}, "model.linear_probe_rounds"),
        ({"finetune": "full", "linear_probe_rounds": -1}, {"rounds": 3}, {}, "model.linear_probe_rounds"),
        ({"finetune": "full"}, {"rounds": 3, "strategy": "fedadam", "linear_probe_lr": 0.1}, {}, "server.linear_probe_lr"),
        (
            {"finetune": "full", "linear_probe_rounds": 1},
            {"rounds": 3, "strategy": "fedadam", "linear_probe_lr": -0.1},
            {},
            "server.linear_probe_lr",
        ),
    ],
)
def test_settings_that_leave_nothing_to_switch_are_refused_naming_the_key(model, server, privacy, key):
    raw = {
        "data": {"dataset": "digits"},
        "model": {"arch": "cnn", **model},
        "server": server,
        "privacy": privacy,
    }
    with pytest.raises(ConfigError, match=key):
        config_from_dict(raw)


def test_linear_probing_of_a_masked_language_model_is_refused():
    with pytest.raises(ConfigError, match="model.linear_probe_rounds"):
        config_from_dict({"model": {"objective": "mlm", "finetune": "lora", "linear_probe_rounds": 1}, "data": {"label_column": ""}})


def test_dp_fedavg_refuses_head_only_rounds_it_would_noise_everywhere():
    cfg = tiny({"mode": "dp-fedavg"}, "none")
    with pytest.raises(ConfigError, match="model.linear_probe_rounds"):
        prepare_run(cfg)


def test_two_workers_give_the_sequential_result_of_a_head_only_round_bitwise(tmp_path):
    results = []
    for workers in (1, 2):
        privacy = {**MODES["dp-sgd"][0], "reproducible_noise": True}  # the same noise in both runs
        cfg = tiny(privacy, "none", run={"workers": workers, "name": f"w{workers}"})
        simulation = Simulation(prepare_run(cfg))
        simulation.run()
        assert simulation.workers == workers
        results.append(simulation.server.parameters)
    assert results[0].keys() == results[1].keys()
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), name
    assert math.isfinite(float(torch.as_tensor(results[0]["head.bias"]).sum()))


def test_head_only_rounds_step_with_the_linear_probe_lr_and_later_rounds_with_the_server_lr():
    # FedAdam's first step on a coordinate is lr * 0.1 Δ / (sqrt(0.01 Δ² + β2 τ²) + τ), i.e. lr in size when |Δ| >> τ:
    # the head moves by linear_probe_lr in round 1, the rest (held fixed until then) by server_lr in round 2
    server = {"strategy": "fedadam", "server_lr": 0.01, "linear_probe_lr": 0.5, "tau": 1e-9}
    simulation = Simulation(prepare_run(tiny(*MODES["no-dp"], server=server)))
    initial = {k: v.astype(np.float64) for k, v in simulation.server.parameters.items()}
    simulation.history.append(simulation.run_unit(1))
    probed = {k: v.astype(np.float64) for k, v in simulation.server.parameters.items()}
    simulation.history.append(simulation.run_unit(2))
    tuned = {k: v.astype(np.float64) for k, v in simulation.server.parameters.items()}
    assert simulation.strategy.server_lr(1) == 0.5 and simulation.strategy.server_lr(2) == 0.01
    for name in initial:
        first = np.abs(probed[name] - initial[name])
        if head(name):  # (features a ReLU zeroes on every example give Δ = 0: no step)
            assert first.max() <= 0.5 * (1 + 1e-4), name
            np.testing.assert_allclose(np.median(first), 0.5, rtol=1e-4)
        else:
            assert not first.any(), name
            moved = np.abs(tuned[name] - probed[name])
            assert moved.max() <= 0.01 * (1 + 1e-4), name  # coordinates whose |Δ| is near τ move less
            np.testing.assert_allclose(np.median(moved), 0.01, rtol=1e-4)


def test_a_linear_probe_lr_needs_a_strategy_with_a_server_lr():
    cfg = tiny(*MODES["no-dp"], server={"strategy": "fedavg", "linear_probe_lr": 0.1})
    with pytest.raises(ConfigError, match="server.linear_probe_lr.*fedadam"):
        Simulation(prepare_run(cfg))


def test_a_run_resumed_in_the_middle_of_probing_keeps_the_probing_learning_rate(tmp_path):
    # killed after head-only round 1 of 2: the resumed run must still step round 2 with linear_probe_lr
    server = {"strategy": "fedadam", "server_lr": 0.01, "linear_probe_lr": 0.3, "rounds": 3}
    cfg = tiny(*MODES["no-dp"], model={"linear_probe_rounds": 2}, server=server)
    whole = Simulation(prepare_run(cfg), out_dir=tmp_path / "whole")
    whole.run()
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(cfg), out_dir=tmp_path / "part", observer=InterruptAtRound(2)).run()
    resumed = Simulation(prepare_run(cfg), out_dir=tmp_path / "part")
    resumed.run(resume=True)
    assert resumed.head_only_rounds == {2}  # the one head-only round it ran itself
    for name, value in whole.server.parameters.items():
        assert np.array_equal(resumed.server.parameters[name], value), name
