"""The leakage audit of an FFM run: captures come from federated rounds; a public unit has nothing to audit."""

import json
import logging

import numpy as np
import pytest

from attacks.audit import audit_capture, prepare_case
from attacks.base import Budget
from secure_ffm.config import config_from_dict
from secure_ffm.engine.wire import FitInstructions
from secure_ffm.errors import ConfigError
from secure_ffm.run.audit import list_observations, load_observation
from secure_ffm.run.cli import main
from secure_ffm.run.simulation import Simulation, prepare_run


def alternating_cnn():
    """Round 1 a public unit, round 2 a federated round; both listed for capture."""
    return config_from_dict(
        {
            "run": {"seed": 0},
            "data": {
                "dataset": "fashion_mnist",
                "max_train_examples": 200,
                "max_test_examples": 50,
                "num_clients": 4,
                "public_fraction": 0.3,
            },
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"batch_size": 2, "local_steps": 1, "lr": 0.1},
            "server": {"rounds": 2},
            "ffm": {"schedule": "alternating", "public_units": 1, "federated_units": 1, "public_steps": 2},
            "audit": {"capture_clients": [0], "capture_rounds": [1, 2]},
        }
    )


@pytest.fixture(scope="module")
def ffm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ffm-audit") / "run"
    simulation = Simulation(prepare_run(alternating_cnn()), out_dir=run_dir)
    simulation.run()
    return run_dir, simulation


def test_a_public_round_listed_for_capture_is_reported_in_the_summary_and_the_log(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="secure_ffm"):
        summary = Simulation(prepare_run(alternating_cnn()), out_dir=tmp_path / "run").run()
    assert [r["phase"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())] == ["public", "federated"]
    assert summary["audit"] == {"captured": [[2, 0]], "public_rounds": [1]}
    assert any("round 1, a public unit" in record.getMessage() for record in caplog.records)


def test_the_capture_of_a_federated_round_is_the_update_from_the_model_the_public_unit_left(ffm_run):
    run_dir, simulation = ffm_run
    assert list_observations(run_dir) == [(2, 0)]
    captured = load_observation(run_dir, round=2, client=0)
    initial = simulation.prepared.initial_parameters
    assert any(not np.array_equal(captured.global_parameters[k], initial[k]) for k in initial)  # round 1 trained on public data
    ins = FitInstructions(round=2, parameters=captured.global_parameters, config=captured.metadata["fit_config"])
    for name, delta in simulation.client(0).train(ins).delta.items():
        np.testing.assert_allclose(captured.observed[name], delta, rtol=1e-5, atol=1e-7)


def test_the_audit_attacks_the_capture_of_the_federated_round(ffm_run):
    run_dir, _ = ffm_run
    result = audit_capture(run_dir, round=2, client=0, attack="inverting-gradients", budget=Budget(max_iterations=2))
    document = result.to_dict()
    assert document["protections"]["captured_round"] == 2 and document["threat_model"]["observes"] == "update"


def test_auditing_a_public_round_is_refused_naming_the_federated_rounds_captured(ffm_run, capsys):
    run_dir, _ = ffm_run
    with pytest.raises(ConfigError, match="public unit"):
        load_observation(run_dir, round=1, client=0)
    assert main(["attack", "--run", str(run_dir), "--round", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--round: round 1" in err and "public unit" in err and "captured federated rounds: 2" in err
    assert not (run_dir / "audit").exists()


def test_an_audit_of_an_mlm_run_is_refused_naming_the_objective():
    config = config_from_dict({"data": {"dataset": "movie_reviews", "num_clients": 2}, "model": {"objective": "mlm"}})
    with pytest.raises(ConfigError, match="model.objective"):
        prepare_case(config)
