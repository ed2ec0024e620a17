"""The [audit] section captures what the server observed, in safetensors + JSON, for replay."""

import json

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError
from secure_ffm.run.audit import list_observations, load_observation
from secure_ffm.run.simulation import Simulation, prepare_run


def tiny_config(**sections):
    raw = {
        "run": {"seed": 1},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 400, "max_test_examples": 200, "num_clients": 4, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 2, "batch_size": 16, "lr": 0.05},
        "server": {"rounds": 2},
        "audit": {"capture_clients": [1], "capture_rounds": [2]},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def test_plaintext_capture_is_the_clients_update(tmp_path):
    run_dir = tmp_path / "run"
    simulation = Simulation(prepare_run(tiny_config()), out_dir=run_dir)
    simulation.run()
    assert list_observations(run_dir) == [(2, 1)]
    captured = load_observation(run_dir)
    assert captured.observes == "update"
    assert captured.metadata["num_examples"] == len(simulation.prepared.data.client_indices[1])
    np.testing.assert_array_equal(captured.indices, simulation.prepared.data.client_indices[1])
    # replaying client 1's round-2 training from the captured global parameters gives the captured update
    from secure_ffm.engine.wire import FitInstructions

    ins = FitInstructions(round=2, parameters=captured.global_parameters, config=captured.metadata["fit_config"])
    update = simulation.client(1).train(ins)
    for name, delta in update.delta.items():
        np.testing.assert_allclose(captured.observed[name], delta, rtol=1e-5, atol=1e-7)


def test_secure_aggregation_capture_holds_only_the_aggregate(tmp_path):
    run_dir = tmp_path / "run"
    Simulation(prepare_run(tiny_config(secure_aggregation={"protocol": "masking", "clip_range": 4.0})), out_dir=run_dir).run()
    captured = load_observation(run_dir, round=2, client=1)
    meta = json.loads((run_dir / "observations" / "round-0002-client-0001.json").read_text())
    assert captured.observes == "aggregate"
    assert meta["num_clients"] == 4 and sorted(meta["aggregated_clients"]) == [0, 1, 2, 3]
    assert set(captured.observed) == set(captured.global_parameters)


def test_a_captured_aggregate_is_the_servers_reading_of_it_with_its_local_steps(tmp_path):
    # DP-FedAvg's discrete shares under masking: the protocol sums integers, which the server reads times γ; until
    # 2026-12-07 the capture held the raw ring sum (about 1e6 units a coordinate) and no step count
    run_dir = tmp_path / "run"
    config = tiny_config(
        privacy={"mode": "dp-fedavg", "target_epsilon": 8.0, "clip_norm": 0.5, "noise_placement": "clients"},
        secure_aggregation={"protocol": "masking"},
        server={"clients_per_round": 4},
    )
    Simulation(prepare_run(config), out_dir=run_dir).run()
    captured = load_observation(run_dir, round=2, client=1)
    assert captured.metadata["local_steps"] == 2
    largest = max(float(np.max(np.abs(v))) for v in captured.observed.values())
    assert largest < 10.0  # clipped updates of norm 0.5 and their noise, in real units


def test_capture_of_unknown_client_is_refused():
    with pytest.raises(ConfigError, match="audit.capture_clients"):
        tiny_config(audit={"capture_clients": [9]})


def test_missing_capture_names_what_was_captured(tmp_path):
    run_dir = tmp_path / "run"
    Simulation(prepare_run(tiny_config(server={"rounds": 2})), out_dir=run_dir).run()
    with pytest.raises(ConfigError, match="round 2 client 1"):
        load_observation(run_dir, round=1, client=0)


def test_captures_of_the_servers_view_are_owner_only(tmp_path):
    """observations/ holds a client's update as the server received it (DP-FedAvg's server noise comes later) and its
    example indices; until 2026-12-07 the folder was 0755 and the .json files 0644 (umask 022)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        Simulation(prepare_run(tiny_config(server={"rounds": 1}, audit={"capture_rounds": [1]})), out_dir=tmp_path / "run").run()
    finally:
        os.umask(old)
    folder = tmp_path / "run" / "observations"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert {p.suffix: stat.S_IMODE(os.stat(p).st_mode) for p in folder.iterdir()} == {".safetensors": 0o600, ".json": 0o600}
