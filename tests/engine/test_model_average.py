"""server.ema_decay: the moving average of the global model is what is evaluated and kept; training goes on from the model."""

import json

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from safetensors.numpy import load_file
from tiny_run import TINY, train  # tests/engine/tiny_run.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict, load_config
from secure_ffm.engine.server import Server
from secure_ffm.engine.strategies import build_strategy
from secure_ffm.engine.training import evaluate
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import Simulation, prepare_run

AVERAGED = TINY.replace("[server]\nrounds = 2\n", "[server]\nrounds = 3\nema_decay = 0.6\n")


@settings(max_examples=40, deadline=None)
@given(decay=st.floats(0.0, 0.99), steps=st.lists(st.floats(-5, 5), min_size=1, max_size=6))
def test_the_average_is_the_recursion_over_every_update(decay, steps):
    config = config_from_dict({"server": {"ema_decay": decay}}).server
    server = Server(
        strategy=build_strategy(config),
        protocol=None,
        parameters={"w": np.zeros(3)},
        num_clients=1,
        clients_per_round=1,
        seed=0,
        ema_decay=decay,
    )
    expected = None
    for step in steps:
        server.parameters = {"w": server.parameters["w"] + np.float32(step)}
        server.update_average()
        x = server.parameters["w"].astype(np.float64)
        expected = x if expected is None else decay * expected + (1 - decay) * x
    if decay == 0:
        assert server.average is None and server.model_parameters is server.parameters
    else:
        np.testing.assert_allclose(server.average["w"], expected, rtol=1e-12, atol=1e-12)
        assert server.model_parameters["w"].dtype == np.float32


def test_a_run_evaluates_and_keeps_the_average_and_trains_on_from_the_model(tmp_path):
    path = tmp_path / "averaged.toml"
    path.write_text(AVERAGED)
    prepared = prepare_run(load_config(path))
    simulation = Simulation(prepared, out_dir=tmp_path / "run")
    iterates = []
    original = simulation.server.update_average

    def record() -> None:
        iterates.append({k: v.copy() for k, v in simulation.server.parameters.items()})
        original()

    simulation.server.update_average = record
    simulation.run()
    assert len(iterates) == 3
    average = {k: v.astype(np.float64) for k, v in iterates[0].items()}
    for x in iterates[1:]:
        average = {k: 0.6 * average[k] + 0.4 * x[k].astype(np.float64) for k in x}
    kept = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(np.array_equal(kept[k], average[k].astype(np.float32)) for k in average)
    last = load_file(str(tmp_path / "run" / "checkpoints" / "round_0003" / "global.safetensors"))
    assert all(np.array_equal(last[k], iterates[-1][k]) for k in last)  # the checkpoint resumes training from the model
    assert not all(np.array_equal(kept[k], last[k]) for k in kept)
    prepared.model.set_trainable(kept)
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test_accuracy"] == pytest.approx(evaluate(prepared.model, prepared.encoded_test).accuracy)


def test_a_resumed_averaged_run_ends_as_the_uninterrupted_one(tmp_path):
    path = tmp_path / "averaged.toml"
    path.write_text(AVERAGED)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train(path, whole) == 0
    assert train(path, part, "--set", "server.rounds=2") == 0
    assert train(path, part, "--resume") == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_average_leaves_the_training_trajectory_bitwise_unchanged(tmp_path):
    # post-processing: the run with the average trains exactly the models of the run without it
    averaged, plain = tmp_path / "averaged.toml", tmp_path / "plain.toml"
    averaged.write_text(AVERAGED)
    plain.write_text(AVERAGED.replace("ema_decay = 0.6\n", ""))
    assert train(averaged, tmp_path / "a") == 0 and train(plain, tmp_path / "p") == 0
    kept = sorted(path.name for path in (tmp_path / "a" / "checkpoints").iterdir())
    assert "round_0003" in kept and kept == sorted(path.name for path in (tmp_path / "p" / "checkpoints").iterdir())
    for round in kept:
        a = load_file(str(tmp_path / "a" / "checkpoints" / round / "global.safetensors"))
        p = load_file(str(tmp_path / "p" / "checkpoints" / round / "global.safetensors"))
        assert a.keys() == p.keys() and all(np.array_equal(a[k], p[k]) for k in a), round


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_to_one_is_refused_naming_the_key(decay):
    with pytest.raises(ConfigError, match="server.ema_decay"):
        config_from_dict({"server": {"ema_decay": decay}})
